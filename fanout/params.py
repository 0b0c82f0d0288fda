"""Check the fields of a generation request, for both tiers.

The front and the worker tier apply the same rules, so a request the front accepts is
one the worker accepts, and an error names the same field wherever it is caught. The
worker reads ``POST /generate`` with ``parse_generation``; each front route checks its
own body beside its handler (``frontend_api.resources``, ``frontend_api.openai_request``,
``frontend_api.tokens``) with the same ``Fields`` and, where it generates,
``read_generation``.
"""

from __future__ import annotations

import math
from typing import Any

from fanout.layout import GenerationDefaults, GenerationLimits
from fanout.protocol import STOP_AT, GenerationParams

# Bounds that are the same for every layout; GET /openapi.json publishes them too.
MAX_SEED = 2**63 - 1
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 1_000_000
MAX_CONTEXT_TOKENS = 1_000_000
MAX_LOGPROBS = 5  # alternatives per position, as OpenAI allows
MAX_PENALTY = 2.0  # presence and frequency penalties lie in -2..2 (OpenAI)
MAX_LOGIT_BIAS = 100.0
MAX_TOKEN_ID = 2**31 - 1  # a token id the worker can hold; the vocabulary decides the rest
# An error repeats a bad value up to this many characters: 10**4000 is no message.
_SHOWN_CHARS = 40


class ParamError(ValueError):
    """A request field that is missing, of the wrong type or out of range."""

    def __init__(self, field: str, reason: str, status: int = 400) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason, self.status = field, reason, status


GENERATION_FIELDS = frozenset({"context", "length", "temperature", "top_k", "top_p",
                               "max_time", "max_tokens", "seed", "stop", "min_tokens",
                               "stop_at", "context_ids", "logprobs", "echo", "presence_penalty",
                               "frequency_penalty", "logit_bias"})
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
# ``exclude`` (distinct requests at the front): earlier suggestions, so many of so long.
MAX_EXCLUDE = 16
MAX_EXCLUDE_CHARS = 2048


def generation_body_limit(limits: GenerationLimits, front_max_body_bytes: int) -> int:
    """The body size a worker must take: the largest ``/generate`` body the front sends.

    The front writes the context back out as JSON, where one byte of context can take six
    ("\\u0000"; an "é" sent as UTF-8 takes three as "\\u00e9"): a context the front took
    within ``limits.context_bytes`` must not then be too large for the worker.
    """
    other_fields = 1024  # seven more numbers and their names, with room to spare
    return max(front_max_body_bytes, 6 * limits.context_bytes + other_fields)


def parse_generation(body: Any, defaults: GenerationDefaults,
                     limits: GenerationLimits) -> GenerationParams:
    """Check a worker ``/generate`` body."""
    fields = Fields(body, GENERATION_FIELDS)
    return read_generation(fields, defaults, limits)


def check_context(name: str, text: str, limits: GenerationLimits) -> None:
    """A context (or prompt) no longer than the layout allows: 413 otherwise."""
    if len(text.encode("utf-8")) > limits.context_bytes:
        raise ParamError(name, f"is longer than {limits.context_bytes} bytes", status=413)


def read_generation(fields: Fields, defaults: GenerationDefaults,
                    limits: GenerationLimits, stop_at: str = "none") -> GenerationParams:
    """The generation fields of a body (``/generate``'s, or ``/autocomplete``'s);
    ``stop_at``: the route's default for that field (a worker's is the neutral "none")."""
    context_ids = fields.token_ids("context_ids")
    context = fields.string("context", default="" if context_ids is not None else None)
    check_context("context", context, limits)
    echo = fields.boolean("echo", False)
    length = fields.integer("length", defaults.length, 0 if echo else 1, limits.length)
    return GenerationParams(
        context=context,
        length=length,
        temperature=fields.number("temperature", defaults.temperature, 0.0, MAX_TEMPERATURE),
        top_k=fields.integer("top_k", defaults.top_k, 0, MAX_TOP_K),
        top_p=fields.number("top_p", defaults.top_p, 0.0, 1.0, low_open=True),
        max_time=fields.number("max_time", defaults.max_time, 0.0, limits.max_time,
                               low_open=True),
        max_tokens=fields.optional_integer("max_tokens", 1, MAX_CONTEXT_TOKENS),
        seed=fields.optional_integer("seed", 0, MAX_SEED),
        stop=fields.stop_sequences("stop"),
        min_tokens=fields.min_tokens("length", length),
        stop_at=fields.choice("stop_at", stop_at, STOP_AT),
        context_ids=context_ids,
        logprobs=fields.optional_integer("logprobs", 0, MAX_LOGPROBS),
        echo=echo,
        presence_penalty=fields.number("presence_penalty", 0.0, -MAX_PENALTY, MAX_PENALTY),
        frequency_penalty=fields.number("frequency_penalty", 0.0, -MAX_PENALTY, MAX_PENALTY),
        logit_bias=fields.logit_bias("logit_bias"),
    )


def read_distinct(fields: Fields) -> tuple[bool, tuple[str, ...]]:
    """The front's ``distinct`` and ``exclude`` (texts that count as repeats; sending any
    turns ``distinct`` on), on both routes that fan out; a stream refuses them
    (``frontend_api.openai_request``)."""
    exclude = fields.texts("exclude", MAX_EXCLUDE, MAX_EXCLUDE_CHARS)
    # Texts to exclude are asked for distinct ones.
    return fields.boolean("distinct", False) or bool(exclude), exclude


class Fields:
    """Typed access to a JSON object's fields, raising :class:`ParamError` by field name.

    A field sent as ``null`` counts as left out, so it takes its default.
    """

    def __init__(self, body: Any, allowed: frozenset[str], ignore_unknown: bool = False) -> None:
        if not isinstance(body, dict):
            raise ParamError("body", f"must be a JSON object, not {json_type(body)}")
        unknown = sorted(set(body) - allowed)
        if unknown and not ignore_unknown:
            raise ParamError(_encodable(unknown[0]),
                             f"unknown field (allowed: {', '.join(sorted(allowed))})")
        self.body = {name: body[name] for name in allowed if name in body} \
            if unknown else body
        self.ignored = [_encodable(name) for name in unknown]

    def string(self, name: str, default: str | None = None) -> str:
        value = self.body.get(name)
        if value is None:
            value = default
        if value is None:
            raise ParamError(name, "is required")
        if not isinstance(value, str):
            raise ParamError(name, f"must be a string, not {json_type(value)}")
        # JSON may escape half a surrogate pair ("\ud800"): that is no text, and no
        # tokenizer, byte count or UTF-8 answer can take it.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ParamError(name, f"is not valid Unicode: a lone surrogate at character "
                                   f"{exc.start}") from None
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.optional_integer(name, low, high)
        return default if value is None else value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ParamError(name, f"must be true or false, not {json_type(value)}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """One of ``choices``, as a string."""
        value = self.string(name, default)
        if value not in choices:
            raise ParamError(name, f"must be one of {', '.join(choices)}, not "
                                   f"{_encodable(repr(value)[:_SHOWN_CHARS])}")
        return value

    def stop_sequences(self, name: str) -> tuple[str, ...]:
        """A string or a list of up to MAX_STOP_SEQUENCES non-empty strings."""
        return self._strings(name, "sequences", MAX_STOP_SEQUENCES, 1, MAX_STOP_CHARS,
                             lone=True)

    def texts(self, name: str, most: int, chars: int) -> tuple[str, ...]:
        """A list of up to ``most`` strings of up to ``chars`` characters each."""
        return self._strings(name, "texts", most, 0, chars, lone=False)

    def _strings(self, name: str, noun: str, most: int, shortest: int, longest: int,
                 lone: bool) -> tuple[str, ...]:
        """Up to ``most`` strings of ``shortest`` to ``longest`` characters, as a list
        (or, with ``lone``, one string alone); ``noun`` names them in the errors."""
        value = self.body.get(name)
        if value is None:
            return ()
        items = [value] if lone and isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            kinds = "a string or a list of strings" if lone else "a list of strings"
            raise ParamError(name, f"must be {kinds}, not {json_type(value)}")
        if len(items) > most:
            raise ParamError(name, f"may hold at most {most} {noun}, not {len(items)}")
        for item in items:
            if not shortest <= len(item) <= longest:
                size = f"{shortest} to {longest}" if shortest else f"at most {longest}"
                raise ParamError(name, f"{noun} must be {size} characters")
            Fields({name: item}, frozenset({name})).string(name)  # no lone surrogates
        return tuple(items)

    def token_ids(self, name: str) -> tuple[int, ...] | None:
        """A non-empty list of token ids (whether the vocabulary has them, the worker says)."""
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise ParamError(name, f"must be a non-empty list of token ids, not "
                                   f"{json_type(value) if value != [] else 'an empty list'}")
        if len(value) > MAX_CONTEXT_TOKENS:
            raise ParamError(name, f"may hold at most {MAX_CONTEXT_TOKENS} token ids", 413)
        for token in value:
            if isinstance(token, bool) or not isinstance(token, int) \
                    or not 0 <= token <= MAX_TOKEN_ID:
                raise ParamError(name, f"token ids are integers from 0 to {MAX_TOKEN_ID}, "
                                       f"not {_shown_json(token)}")
        return tuple(value)

    def logit_bias(self, name: str) -> tuple[tuple[int, float], ...]:
        """An object from token ids (as strings, the way JSON keys are) to -100..100."""
        value = self.body.get(name)
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise ParamError(name, f"must be an object from token ids to biases, not "
                                   f"{json_type(value)}")
        pairs = []
        for key, bias in value.items():
            token = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() \
                and len(key) < 12 else None
            if token is None or token > MAX_TOKEN_ID:
                raise ParamError(name, f"keys are token ids (0 to {MAX_TOKEN_ID}), not "
                                       f"{_encodable(repr(key)[:_SHOWN_CHARS])}")
            checked = Fields({name: bias}, frozenset({name})).number(
                name, 0.0, -MAX_LOGIT_BIAS, MAX_LOGIT_BIAS)
            if checked:
                pairs.append((token, checked))
        return tuple(sorted(pairs))

    def min_tokens(self, length_name: str, length: int) -> int:
        """``min_tokens``: at most the length asked for, which names its own field."""
        value = self.optional_integer("min_tokens", 0, MAX_CONTEXT_TOKENS) or 0
        if value > length:
            raise ParamError("min_tokens", f"must be at most {length_name} ({length}), "
                                           f"not {value}")
        return value

    def optional_integer(self, name: str, low: int, high: int) -> int | None:
        value = self.body.get(name)
        if value is None:
            return None
        # JSON has numbers, not integers: 20.0 is 20, as JSON Schema and JavaScript agree.
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamError(name, f"must be an integer, not {json_type(value)}")
        if not low <= value <= high:
            raise ParamError(name, f"must be between {low} and {high}, not {_shown(value)}")
        return value

    def number(self, name: str, default: float, low: float, high: float,
               low_open: bool = False) -> float:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamError(name, f"must be a number, not {json_type(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ParamError(name, f"must be a finite number, not {json_type(value)}")
        # Compared as sent: Python compares int and float exactly, whereas float(10**400)
        # would overflow.
        if (value <= low if low_open else value < low) or value > high:
            lower = f"above {low:g}" if low_open else f"at least {low:g}"
            raise ParamError(name, f"must be {lower} and at most {high:g}, "
                                   f"not {_shown(value)}")
        return float(value)


def _shown(value: int | float) -> str:
    """A bad number as an error message repeats it: 10**4000 shortened."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    if len(text) > _SHOWN_CHARS:
        text = f"{text[:_SHOWN_CHARS]}... ({len(text)} characters)"
    return _encodable(text)


def _shown_json(value: Any) -> str:
    return _shown(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else json_type(value)


def _encodable(text: str) -> str:
    """``text`` with any lone surrogate escaped, so that an error can repeat it as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def json_type(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        # Python's json reads NaN and Infinity, which JSON itself does not have.
        return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
