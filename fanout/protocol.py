"""The contract between the front and the worker tier, written once.

The front sends one sample's work as a ``GenerationParams`` (the body of ``POST /generate``
and ``POST /generate/stream``); the worker answers with a ``WorkerCompletion``, or streams
``StreamPiece`` lines ending with one. Both tiers build and read the JSON here and nowhere
else: the worker with ``to_json`` / ``encode_line``, the front with ``from_json`` /
``decode_line``; ``fanout.params.parse_generation`` is how the worker checks a body.

On the wire (``/generate`` answers the completion alone; a stream sends one JSON object a
line, the last with ``"done": true``)::

    POST /generate         {"context", "length", "temperature", "top_k", "top_p", "max_time",
                            and when not neutral "max_tokens", "seed", "stop", "min_tokens",
                            "stop_at", "context_ids", "logprobs", "echo", "presence_penalty",
                            "frequency_penalty", "logit_bias": {"id": bias}}
    completion             {"text", "tokens", "finish_reason", "time", "seed",
                            "context_tokens", ["prompt_text"],
                            ["logprobs", "cumulative_logprob"], "worker"}
    stream line            {"text", ["prompt_text"], ["logprobs"]}
    stream's last line     {"done": true, ...the completion}

Torch-free and requests-free: both tiers and the tools import it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, TypedDict

NDJSON_TYPE = "application/x-ndjson"  # what /generate/stream answers
# GenerationParams.stop_at's values; "none" (the neutral one) is sent as no field at all.
STOP_AT = ("none", "word", "sentence", "line", "paragraph")
# With stop_at, how many tokens past ``length`` a completion may take to reach a boundary;
# past them (or out of time) it is cut back to the last boundary it reached instead.
EXTRA_TOKENS = 8


@dataclass(frozen=True)
class GenerationParams:
    """One sample's worth of work for a worker: the body of ``POST /generate``.

    The front builds it, ``to_json`` is what it sends, ``parse_generation`` is what the
    worker reads back. Fields at their neutral value are not sent, so a worker that
    predates a field still takes requests that do not use it.
    """

    context: str
    length: int  # new tokens; 0 only with echo (score the context, generate nothing)
    temperature: float
    top_k: int
    top_p: float
    max_time: float
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()  # generation ends at the first of these, which is cut off
    # Neither end of text nor a stop sequence ends a completion before this many tokens
    # (vLLM's min_tokens); 0 is no minimum.
    min_tokens: int = 0
    # Where the text may end (one of STOP_AT): "none" wherever length, time or a stop ends
    # it; otherwise only after a whole word, sentence, line or paragraph (the worker goes
    # on a few tokens past length to reach one, or cuts back to the last one reached).
    stop_at: str = "none"
    # The context as token ids (an OpenAI prompt sent as ids): used instead of ``context``.
    context_ids: tuple[int, ...] | None = None
    # Log-probabilities of the chosen tokens, with this many likeliest alternatives (0-5)
    # per position; None: none reported.
    logprobs: int | None = None
    # Report the context too: its text and, with ``logprobs``, its tokens' log-probabilities.
    echo: bool = False
    # OpenAI's penalties on tokens already in the completion: a token's logit loses
    # frequency_penalty x its count so far, and presence_penalty once it has appeared.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Added to a token's logit before sampling: (token id, bias) pairs, bias in -100..100.
    logit_bias: tuple[tuple[int, float], ...] = ()

    # Shallow on purpose: every field is a scalar or a tuple, and asdict's deep copy was a
    # visible share of the front's per-sample cost.
    def to_json(self) -> dict[str, Any]:
        body = {k: v for k, v in vars(self).items() if v != _NEUTRAL.get(k, ())}
        if self.logit_bias:
            body["logit_bias"] = {str(token): bias for token, bias in self.logit_bias}
        return body

    def with_seed(self, seed: int | None) -> GenerationParams:
        return replace(self, seed=seed)


# The fields to_json leaves out at these values (and any field at None or ()).
_NEUTRAL: dict[str, Any] = {"max_tokens": None, "seed": None, "min_tokens": 0,
                            "stop_at": "none",
                            "context_ids": None, "logprobs": None, "echo": False,
                            "presence_penalty": 0.0, "frequency_penalty": 0.0}


class LogprobsJson(TypedDict):
    """OpenAI's (legacy completions) ``logprobs`` object: four lists, one item per token.

    The front hands it to its clients as the worker sent it (sliced, in a stream).
    """

    tokens: list[str]
    token_logprobs: list[float | None]  # None: a prompt's first token, which has none
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


@dataclass(frozen=True)
class WorkerCompletion:
    """One completion as a worker answers it: ``/generate``'s body, a stream's last line."""

    text: str
    time: float  # seconds the worker took (sent to 0.1 ms)
    tokens: int
    # "length", "stop" (end of text or a stop sequence), "time" (max_time ran out) or
    # "abandoned" (the front stopped waiting)
    finish_reason: str
    seed: int | None  # None: the engine cannot replay it (a ctranslate2 pool, unseeded)
    worker: dict[str, Any]  # who answered: pid, slot, device, pool
    context_tokens: int = 0  # the prompt tokens the worker fed the model
    # Only when asked (GenerationParams.logprobs / echo): OpenAI's logprobs object for the
    # prompt's tokens (echo) then the completion's, their sum over the completion, and the
    # prompt's text as the worker fed it.
    logprobs: LogprobsJson | None = None
    cumulative_logprob: float | None = None
    prompt_text: str | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "text": self.text, "tokens": self.tokens, "finish_reason": self.finish_reason,
            "time": round(self.time, 4), "seed": self.seed,
            "context_tokens": self.context_tokens}
        if self.prompt_text is not None:
            body["prompt_text"] = self.prompt_text
        if self.logprobs is not None:
            body["logprobs"] = self.logprobs
            body["cumulative_logprob"] = self.cumulative_logprob
        body["worker"] = self.worker
        return body

    @staticmethod
    def from_json(body: Mapping[str, Any]) -> WorkerCompletion:
        """Raises KeyError naming a field the worker must send and did not."""
        return WorkerCompletion(
            text=body["text"], time=body["time"], tokens=body["tokens"],
            finish_reason=body["finish_reason"], seed=body["seed"], worker=body["worker"],
            context_tokens=int(body.get("context_tokens", 0)),
            logprobs=body.get("logprobs"), cumulative_logprob=body.get("cumulative_logprob"),
            prompt_text=body.get("prompt_text"))


@dataclass(frozen=True)
class StreamPiece:
    """A streamed sample's next text, with its tokens' logprobs when asked; the first piece
    of an echoed sample carries the prompt's text instead."""

    text: str
    logprobs: LogprobsJson | None = None
    prompt_text: str | None = None

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"text": self.text}
        if self.prompt_text is not None:
            line["prompt_text"] = self.prompt_text
        if self.logprobs is not None:
            line["logprobs"] = self.logprobs
        return line

    @staticmethod
    def from_json(body: Mapping[str, Any]) -> StreamPiece:
        return StreamPiece(str(body.get("text", "")), body.get("logprobs"),
                           body.get("prompt_text"))


# One line of ``/generate/stream``: a piece, or the completion that ends the stream.
StreamLine = StreamPiece | WorkerCompletion


def encode_line(line: StreamLine) -> bytes:
    """A stream line as the worker sends it: JSON and a newline."""
    body = {"done": True, **line.to_json()} if isinstance(line, WorkerCompletion) \
        else line.to_json()
    return json.dumps(body).encode() + b"\n"


def decode_line(line: bytes) -> StreamLine | None:
    """A stream line as the front reads it; None for one that carries nothing.

    Raises ValueError for a line that is no JSON, KeyError for a last line that lacks
    a completion's field.
    """
    body = json.loads(line) if line else {}
    if body.get("done"):
        return WorkerCompletion.from_json(body)
    if body.get("text") or "prompt_text" in body or body.get("logprobs"):
        return StreamPiece.from_json(body)
    return None
