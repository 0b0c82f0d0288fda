"""Parse and check the JSON body of a generation request, for both tiers.

The front and the worker tier apply the same rules, so a request the front accepts is
one the worker accepts, and an error names the same field wherever it is caught.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fanout.layout import GenerationDefaults, GenerationLimits
from fanout.protocol import GenerationParams

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


@dataclass(frozen=True)
class AutocompleteRequest:
    """A front request: which pool, how many samples, and the shared parameters.

    ``prompts``, when set, is a batch (OpenAI's list of prompts): ``n_samples`` is then
    spread evenly over them, prompt by prompt, so sample i answers prompt
    ``i // (n_samples // len(prompts))``. ``params`` is the first prompt's.
    """

    model_size: str
    n_samples: int
    params: GenerationParams
    prompts: tuple[GenerationParams, ...] = ()

    @property
    def per_prompt(self) -> int:
        return self.n_samples // max(1, len(self.prompts))

    def sample_params(self) -> list[GenerationParams]:
        """Per-sample parameters; a given seed becomes seed, seed+1, ... so samples of a
        prompt differ (each prompt of a batch starts from the seed again)."""
        seed = self.params.seed
        return [prompt.with_seed(None if seed is None else (seed + i) % (MAX_SEED + 1))
                for prompt in self.prompts or (self.params,) for i in range(self.per_prompt)]


GENERATION_FIELDS = frozenset({"context", "length", "temperature", "top_k", "top_p",
                               "max_time", "max_tokens", "seed", "stop", "min_tokens",
                               "context_ids", "logprobs", "echo", "presence_penalty",
                               "frequency_penalty", "logit_bias"})
AUTOCOMPLETE_FIELDS = frozenset({"context", "length", "temperature", "top_k", "top_p",
                                 "max_time", "max_tokens", "seed", "min_tokens",
                                 "model_size", "n_samples"})
# POST /v1/completions: every field of OpenAI's completions reference...
COMPLETION_FIELDS = frozenset({"model", "prompt", "best_of", "echo", "frequency_penalty",
                               "logit_bias", "logprobs", "max_tokens", "n",
                               "presence_penalty", "seed", "stop", "stream", "stream_options",
                               "suffix", "temperature", "top_p", "user",
                               # ...and extensions, as vLLM has them
                               "top_k", "min_tokens"})
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 256
OPENAI_DEFAULT_MAX_TOKENS = 16


@dataclass(frozen=True)
class CompletionRequest:
    """An OpenAI-style completion: the same fan-out as /autocomplete, plus how to answer.

    ``request.n_samples`` is prompts x ``best_of`` (``n`` unless asked): with ``best_of``
    the ``n`` likeliest of each prompt's samples come back.
    """

    request: AutocompleteRequest
    stream: bool
    n: int
    logprobs: int | None  # what the client asked for; best_of asks the workers anyway
    echo: bool
    include_usage: bool
    ignored: tuple[str, ...]  # fields OpenAI's reference does not have: logged, not used

    @property
    def best_of(self) -> int:
        return self.request.per_prompt


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
    fields = _Fields(body, GENERATION_FIELDS)
    return _generation(fields, defaults, limits)


def parse_autocomplete(body: Any, defaults: GenerationDefaults, limits: GenerationLimits,
                       pools: Mapping[str, object], max_samples: int) -> AutocompleteRequest:
    """Check a front ``/autocomplete`` body; an unknown pool is a 404, as for a missing page."""
    fields = _Fields(body, AUTOCOMPLETE_FIELDS)
    model_size = fields.string("model_size", default=next(iter(pools)))
    if model_size not in pools:
        raise ParamError("model_size", f"unknown model {model_size!r}; "
                                       f"choose one of {', '.join(pools)}", status=404)
    n_samples = fields.integer("n_samples", defaults.n_samples, 1, max_samples)
    return AutocompleteRequest(model_size, n_samples, _generation(fields, defaults, limits))


def parse_completion(body: Any, defaults: GenerationDefaults, limits: GenerationLimits,
                     pools: Mapping[str, object], max_samples: int) -> CompletionRequest:
    """Check a ``/v1/completions`` body, with OpenAI's names and defaults.

    ``model`` is a pool; OpenAI has no top-k, so it is off unless ``top_k`` (an extension)
    asks. Unlike the other routes, fields OpenAI's reference does not have are ignored
    rather than refused (clients add their own, and an OpenAI-compatible server that
    refuses them breaks those clients); the caller logs ``ignored``.
    """
    fields = _Fields(body, COMPLETION_FIELDS, ignore_unknown=True)
    model = fields.string("model")
    if model not in pools:
        raise ParamError("model", f"the model {model!r} does not exist; choose one of "
                                  f"{', '.join(pools)}", status=404)
    suffix = fields.string("suffix", default="")
    if suffix:
        raise ParamError("suffix", f"model {model!r} has no fill-in-the-middle: it only "
                                   "continues a prompt; send the text before the cursor as "
                                   "prompt and leave suffix out")
    fields.string("user", default="")  # accepted for compatibility; not used
    stream = fields.boolean("stream", False)
    include_usage = _stream_options(fields, stream)
    echo = fields.boolean("echo", False)
    length = fields.integer("max_tokens", min(OPENAI_DEFAULT_MAX_TOKENS, limits.length),
                            0 if echo else 1, limits.length)
    n = fields.integer("n", 1, 1, max_samples)
    best_of = fields.integer("best_of", n, 1, max_samples)
    if best_of < n:
        raise ParamError("best_of", f"must be at least n ({n}), not {best_of}")
    if best_of > n and stream:
        raise ParamError("best_of", "cannot be used with stream: the best samples are "
                                    "known only once all are in")
    logprobs = fields.optional_integer("logprobs", 0, MAX_LOGPROBS)
    params = GenerationParams(
        context="",
        length=length,
        temperature=fields.number("temperature", 1.0, 0.0, 2.0),
        top_k=fields.integer("top_k", 0, 0, MAX_TOP_K),
        top_p=fields.number("top_p", 1.0, 0.0, 1.0, low_open=True),
        max_time=defaults.max_time,
        seed=fields.optional_integer("seed", 0, MAX_SEED),
        stop=fields.stop_sequences("stop"),
        min_tokens=fields.min_tokens("max_tokens", length),
        # best_of ranks samples by their log-probability: the workers must report it.
        logprobs=logprobs if best_of == n or logprobs is not None else 0,
        echo=echo,
        presence_penalty=fields.number("presence_penalty", 0.0, -MAX_PENALTY, MAX_PENALTY),
        frequency_penalty=fields.number("frequency_penalty", 0.0, -MAX_PENALTY, MAX_PENALTY),
        logit_bias=fields.logit_bias("logit_bias"),
    )
    prompts = tuple(replace(params, context=text, context_ids=ids)
                    for text, ids in _prompts(body.get("prompt"), limits))
    if len(prompts) * best_of > max_samples:
        raise ParamError("prompt", f"{len(prompts)} prompts x {best_of} "
                                   f"{'best_of' if best_of > n else 'n'} = "
                                   f"{len(prompts) * best_of} samples; this server takes at "
                                   f"most {max_samples} per request: send fewer prompts at "
                                   "once")
    request = AutocompleteRequest(model, len(prompts) * best_of, prompts[0],
                                  prompts if len(prompts) > 1 else ())
    return CompletionRequest(request, stream, n, logprobs, echo, include_usage,
                             tuple(fields.ignored))


def parse_tokenize(body: Any, pools: Mapping[str, object]) -> tuple[str, str]:
    """A front ``POST /tokenize`` body (vLLM's): the pool and the text."""
    fields = _Fields(body, frozenset({"model", "prompt", "add_special_tokens"}))
    fields.boolean("add_special_tokens", True)  # GPT-2 adds none either way
    text = fields.string("prompt")
    if len(text.encode("utf-8")) > MAX_CONTEXT_TOKENS:
        raise ParamError("prompt", f"is longer than {MAX_CONTEXT_TOKENS} bytes", status=413)
    return _pool(fields, pools), text


def parse_detokenize(body: Any, pools: Mapping[str, object]) -> tuple[str, tuple[int, ...]]:
    """A front ``POST /detokenize`` body (vLLM's): the pool and the token ids."""
    fields = _Fields(body, frozenset({"model", "tokens"}))
    tokens = fields.token_ids("tokens")
    if tokens is None:
        raise ParamError("tokens", "is required")
    return _pool(fields, pools), tokens


def _pool(fields: _Fields, pools: Mapping[str, object]) -> str:
    """``model``: a pool, the layout's first when left out."""
    model = fields.string("model", default=next(iter(pools)))
    if model not in pools:
        raise ParamError("model", f"the model {model!r} does not exist; choose one of "
                                  f"{', '.join(pools)}", status=404)
    return model


def _stream_options(fields: _Fields, stream: bool) -> bool:
    """``stream_options.include_usage``: a last chunk with the usage."""
    options = fields.body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise ParamError("stream_options", "is only allowed with stream: true")
    checked = _Fields(options, frozenset({"include_usage", "continuous_usage_stats"}),
                      ignore_unknown=True)
    try:
        return checked.boolean("include_usage", False)
    except ParamError as error:
        raise ParamError(f"stream_options.{error.field}", error.reason) from None


def _prompts(value: Any, limits: GenerationLimits) -> list[tuple[str, tuple[int, ...] | None]]:
    """OpenAI's four forms of ``prompt`` as (text, token ids) pairs: a string, a list of
    strings, a list of token ids, or a list of lists of token ids."""
    if value is None:
        return [("", None)]
    if isinstance(value, str) or (isinstance(value, list) and value
                                  and all(isinstance(item, int) and not isinstance(item, bool)
                                          for item in value)):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ParamError("prompt", "must be a string, a list of strings, a list of token ids "
                                   "or a list of lists of token ids, not "
                                   f"{_json_type(value) if value != [] else 'an empty list'}")
    prompts: list[tuple[str, tuple[int, ...] | None]] = []
    for item in value:
        if isinstance(item, list):
            prompts.append(("", _Fields({"prompt": item}, frozenset({"prompt"}))
                            .token_ids("prompt")))
            continue
        text = _Fields({"prompt": item}, frozenset({"prompt"})).string("prompt")
        _check_context("prompt", text, limits)
        prompts.append((text, None))
    return prompts


def _check_context(name: str, text: str, limits: GenerationLimits) -> None:
    if len(text.encode("utf-8")) > limits.context_bytes:
        raise ParamError(name, f"is longer than {limits.context_bytes} bytes", status=413)


def _generation(fields: _Fields, defaults: GenerationDefaults,
                limits: GenerationLimits) -> GenerationParams:
    context_ids = fields.token_ids("context_ids")
    context = fields.string("context", default="" if context_ids is not None else None)
    _check_context("context", context, limits)
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
        context_ids=context_ids,
        logprobs=fields.optional_integer("logprobs", 0, MAX_LOGPROBS),
        echo=echo,
        presence_penalty=fields.number("presence_penalty", 0.0, -MAX_PENALTY, MAX_PENALTY),
        frequency_penalty=fields.number("frequency_penalty", 0.0, -MAX_PENALTY, MAX_PENALTY),
        logit_bias=fields.logit_bias("logit_bias"),
    )


class _Fields:
    """Typed access to a JSON object's fields, raising :class:`ParamError` by field name.

    A field sent as ``null`` counts as left out, so it takes its default.
    """

    def __init__(self, body: Any, allowed: frozenset[str], ignore_unknown: bool = False) -> None:
        if not isinstance(body, dict):
            raise ParamError("body", f"must be a JSON object, not {_json_type(body)}")
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
            raise ParamError(name, f"must be a string, not {_json_type(value)}")
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
            raise ParamError(name, f"must be true or false, not {_json_type(value)}")
        return value

    def stop_sequences(self, name: str) -> tuple[str, ...]:
        """A string or a list of up to MAX_STOP_SEQUENCES non-empty strings."""
        value = self.body.get(name)
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ParamError(name, f"must be a string or a list of strings, not "
                                   f"{_json_type(value)}")
        if len(items) > MAX_STOP_SEQUENCES:
            raise ParamError(name, f"may hold at most {MAX_STOP_SEQUENCES} sequences, "
                                   f"not {len(items)}")
        for item in items:
            if not 0 < len(item) <= MAX_STOP_CHARS:
                raise ParamError(name, f"sequences must be 1 to {MAX_STOP_CHARS} characters")
            _Fields({name: item}, frozenset({name})).string(name)  # no lone surrogates
        return tuple(items)

    def token_ids(self, name: str) -> tuple[int, ...] | None:
        """A non-empty list of token ids (whether the vocabulary has them, the worker says)."""
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, list) or not value:
            raise ParamError(name, f"must be a non-empty list of token ids, not "
                                   f"{_json_type(value) if value != [] else 'an empty list'}")
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
                                   f"{_json_type(value)}")
        pairs = []
        for key, bias in value.items():
            token = int(key) if isinstance(key, str) and key.isascii() and key.isdigit() \
                and len(key) < 12 else None
            if token is None or token > MAX_TOKEN_ID:
                raise ParamError(name, f"keys are token ids (0 to {MAX_TOKEN_ID}), not "
                                       f"{_encodable(repr(key)[:_SHOWN_CHARS])}")
            checked = _Fields({name: bias}, frozenset({name})).number(
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
            raise ParamError(name, f"must be an integer, not {_json_type(value)}")
        if not low <= value <= high:
            raise ParamError(name, f"must be between {low} and {high}, not {_shown(value)}")
        return value

    def number(self, name: str, default: float, low: float, high: float,
               low_open: bool = False) -> float:
        value = self.body.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ParamError(name, f"must be a number, not {_json_type(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ParamError(name, f"must be a finite number, not {_json_type(value)}")
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
        else _json_type(value)


def _encodable(text: str) -> str:
    """``text`` with any lone surrogate escaped, so that an error can repeat it as UTF-8."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_type(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        # Python's json reads NaN and Infinity, which JSON itself does not have.
        return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
