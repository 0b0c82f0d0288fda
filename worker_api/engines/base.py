"""The worker contract both engines keep, written once: how tokens become a completion.

An engine only samples token ids (``Engine.sample``); everything a client can see is
decided here, the same way for every engine: where the text ends (end of text, a stop
sequence past ``min_tokens``, ``length``, ``max_time``, the front hanging up), which
finish reason it gets, how many tokens it counts, and which pieces a stream may send
(text that could still turn into a stop sequence, or half of a UTF-8 character, is held
back, so the pieces always add up to the final text).

Torch-free: the CTranslate2 worker imports this and must not load torch.
"""

from __future__ import annotations

import os
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil

from fanout.model_files import ModelLoadError
from fanout.params import MAX_SEED, GenerationParams, ParamError

__all__ = ["MIN_SAMPLING_TEMPERATURE", "Completion", "Decoding", "Engine", "ModelLoadError"]

# Dividing the logits by a temperature this small (1e-40, say) overflows them to inf and
# sampling fails on NaN probabilities; that close to 0 it is greedy decoding anyway.
MIN_SAMPLING_TEMPERATURE = 1e-6
# What a byte-level BPE decodes half of a multi-byte character to, until the rest comes.
_PARTIAL_CHARACTER = "\ufffd"


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    # "length", "stop" (end of text or a stop sequence), "time" (max_time ran out) or
    # "abandoned" (the front stopped waiting)
    finish_reason: str
    time: float
    seed: int | None  # None: the engine cannot replay this sample (see Engine.sample)
    context_tokens: int


def stop_at(text: str, stops: tuple[str, ...], floor: int = 0) -> int | None:
    """Where ``text`` ends: the start of the first stop sequence that ends past ``floor``
    characters (the text of the first ``min_tokens`` tokens), or None."""
    found = [at for stop in stops if (at := text.find(stop, max(0, floor - len(stop) + 1))) >= 0]
    return min(found) if found else None


class Decoding:
    """One completion's text as its tokens arrive (see the module docstring)."""

    def __init__(self, detokenize: Callable[[list[int]], str], eos_token_id: int,
                 params: GenerationParams) -> None:
        self.detokenize, self.eos_token_id, self.params = detokenize, eos_token_id, params
        self.ids: list[int] = []
        self.text = ""
        self.cut: int | None = None  # where a stop sequence starts
        self.floor: int | None = 0 if params.min_tokens == 0 else None
        self.end_of_text = False
        self.sent = 0
        self.hold = max((len(stop) for stop in params.stop), default=1) - 1

    @property
    def finished(self) -> bool:
        return self.end_of_text or self.cut is not None or len(self.ids) >= self.params.length

    def push(self, token: int) -> str:
        """Take one sampled token; return the text a stream may send now ('' if none)."""
        if self.finished:
            return ""
        if token == self.eos_token_id:
            self.end_of_text = True
            return ""
        self.ids.append(token)
        self.text = self.detokenize(self.ids)
        if self.floor is None and len(self.ids) >= self.params.min_tokens:
            self.floor = len(self.text)
        if self.floor is not None:
            self.cut = stop_at(self.text, self.params.stop, self.floor)
        if self.cut is not None:
            end = self.cut
        else:
            end = len(self.text) - self.hold
            if self.text.endswith(_PARTIAL_CHARACTER):
                end = min(end, len(self.text.rstrip(_PARTIAL_CHARACTER)))
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:end], end
        return piece

    def completion(self, count_tokens: Callable[[str], int], started: float,
                   seed: int | None, context_tokens: int, abandoned: bool) -> Completion:
        if self.cut is not None:  # the text ends before the stop sequence, not returned
            text, reason = self.text[:self.cut], "stop"
            tokens = count_tokens(text)
        else:
            text, tokens = self.text, len(self.ids)
            if self.end_of_text:
                reason = "stop"
            elif tokens >= self.params.length:
                reason = "length"
            else:
                reason = "abandoned" if abandoned else "time"
        return Completion(text=text, tokens=tokens, finish_reason=reason,
                          time=time.perf_counter() - started, seed=seed,
                          context_tokens=context_tokens)


class Engine(ABC):
    """A tokenizer and a causal LM on one device, ready to sample completions.

    Subclasses load the model and implement ``tokenize``, ``detokenize`` and ``sample``;
    ``generate`` and ``stream`` are the worker contract, the same for every engine.
    """

    name: str
    window: int  # the model's context window, in tokens
    eos_token_id: int
    load_seconds: float
    ready: bool = False

    @abstractmethod
    def tokenize(self, text: str) -> list[int]: ...

    @abstractmethod
    def detokenize(self, ids: list[int]) -> str: ...

    @abstractmethod
    def sample(self, params: GenerationParams, context: list[int],
               seed: int | None) -> tuple[Iterator[int], int | None]:
        """Sampled token ids after ``context``, as they come; closing the iterator stops
        generation. Also returns the seed that replays them (None when none can)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The engine's part of ``GET /info``."""

    def memory(self) -> dict[str, int]:
        """Bytes in use: the process's resident set (engines on GPUs add their figures)."""
        return {"rss_bytes": psutil.Process(os.getpid()).memory_info().rss}

    def info(self) -> dict[str, Any]:
        return {**self.describe(), "engine": self.name, "window": self.window,
                "load_seconds": round(self.load_seconds, 3), "memory": self.memory()}

    def warm_up(self) -> Completion:
        """One short generation proves the device works before the worker takes traffic."""
        done = self.generate(GenerationParams(context="Hello", length=2, temperature=1.0,
                                              top_k=0, top_p=1.0, max_time=60.0, seed=0))
        self.ready = True
        return done

    def context_ids(self, context: str, length: int, max_tokens: int | None) -> list[int]:
        """Token ids to feed: the end of the context, short enough to leave room for ``length``."""
        if length >= self.window:
            raise ParamError("length", f"must be below the model's window of {self.window} "
                                       f"tokens, not {length}")
        room = self.window - length
        keep = room if max_tokens is None else min(room, max_tokens)
        ids = self.tokenize(context)[-keep:]
        # GPT-2 starts from <|endoftext|> when there is no context to condition on.
        return ids or [self.eos_token_id]

    def generate(self, params: GenerationParams,
                 abandoned: Callable[[], bool] | None = None) -> Completion:
        """Sample up to ``params.length`` new tokens after the context.

        ``abandoned`` is asked after every token; once it says yes (the front stopped
        waiting), generation stops, so a dropped request frees its worker at once.
        """
        *_, done = self.stream(params, abandoned)
        assert isinstance(done, Completion)
        return done

    def stream(self, params: GenerationParams,
               abandoned: Callable[[], bool] | None = None) -> Iterator[str | Completion]:
        """The completion's text as it is generated, in pieces, then the Completion."""
        started = time.perf_counter()
        context = self.context_ids(params.context, params.length, params.max_tokens)
        wanted = params.seed if params.seed is not None else random.randint(0, MAX_SEED)
        tokens, seed = self.sample(params, context, wanted)
        decoding = Decoding(self.detokenize, self.eos_token_id, params)
        deadline = started + params.max_time
        gone = False
        try:
            for token in tokens:
                piece = decoding.push(token)
                if piece:
                    yield piece
                gone = abandoned is not None and abandoned()
                if decoding.finished or gone or time.perf_counter() >= deadline:
                    break
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()  # stops the engine within the token it is on
        done = decoding.completion(lambda text: len(self.tokenize(text)), started, seed,
                                   len(context), gone)
        if len(done.text) > decoding.sent:
            yield done.text[decoding.sent:]
        yield done


def is_greedy(params: GenerationParams) -> bool:
    return params.temperature < MIN_SAMPLING_TEMPERATURE
