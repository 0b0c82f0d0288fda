"""``POST /v1/completions``'s request: OpenAI's fields, checked into a fan-out.

The wire schema of the OpenAI route, beside its handler (``frontend_api.openai_api``):
OpenAI's field names and defaults, the reference's fields first and vLLM's extensions
after, and the same bounds and error wording as every other route (``fanout.params``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from fanout.layout import GenerationDefaults, GenerationLimits, pool_name
from fanout.params import (
    MAX_LOGPROBS,
    MAX_PENALTY,
    MAX_SEED,
    MAX_TOP_K,
    Fields,
    ParamError,
    check_context,
    json_type,
    read_distinct,
)
from fanout.protocol import STOP_AT, GenerationParams
from frontend_api.samples import AutocompleteRequest

# POST /v1/completions: every field of OpenAI's completions reference...
COMPLETION_FIELDS = frozenset({"model", "prompt", "best_of", "echo", "frequency_penalty",
                               "logit_bias", "logprobs", "max_tokens", "n",
                               "presence_penalty", "seed", "stop", "stream", "stream_options",
                               "suffix", "temperature", "top_p", "user",
                               # ...and extensions, as vLLM has them, then fanout's
                               "top_k", "min_tokens", "stop_at", "distinct", "exclude"})
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


def parse_completion(body: Any, defaults: GenerationDefaults, limits: GenerationLimits,
                     pools: Mapping[str, object], max_samples: int) -> CompletionRequest:
    """Check a ``/v1/completions`` body, with OpenAI's names and defaults.

    ``model`` is a pool; OpenAI has no top-k, so it is off unless ``top_k`` (an extension)
    asks. Unlike the other routes, fields OpenAI's reference does not have are ignored
    rather than refused (clients add their own, and an OpenAI-compatible server that
    refuses them breaks those clients); the caller logs ``ignored``.
    """
    fields = Fields(body, COMPLETION_FIELDS, ignore_unknown=True)
    model = pool_name(pools, fields.string("model"))  # an alias means its pool
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
        # OpenAI's clients take max_tokens as a hard cap and the text as generated.
        stop_at=fields.choice("stop_at", "none", STOP_AT),
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
    distinct, exclude = read_distinct(fields)
    if distinct and stream:
        raise ParamError("distinct", "cannot be used with stream: a streamed text is shown "
                                     "before it is known to repeat another")
    request = AutocompleteRequest(model, len(prompts) * best_of, prompts[0],
                                  prompts if len(prompts) > 1 else (), distinct, exclude)
    return CompletionRequest(request, stream, n, logprobs, echo, include_usage,
                             tuple(fields.ignored))


def _stream_options(fields: Fields, stream: bool) -> bool:
    """``stream_options.include_usage``: a last chunk with the usage."""
    options = fields.body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise ParamError("stream_options", "is only allowed with stream: true")
    checked = Fields(options, frozenset({"include_usage", "continuous_usage_stats"}),
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
                                   f"{json_type(value) if value != [] else 'an empty list'}")
    prompts: list[tuple[str, tuple[int, ...] | None]] = []
    for item in value:
        if isinstance(item, list):
            prompts.append(("", Fields({"prompt": item}, frozenset({"prompt"}))
                            .token_ids("prompt")))
            continue
        text = Fields({"prompt": item}, frozenset({"prompt"})).string("prompt")
        check_context("prompt", text, limits)
        prompts.append((text, None))
    return prompts
