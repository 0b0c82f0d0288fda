"""The worker contract both engines keep, written once: how tokens become a completion.

An engine only samples token ids (``Engine.sample``) and scores them (``Engine.score``);
everything a client can see is decided here, the same way for every engine: what the
model is fed (the context's end, or the ids sent), where the text ends (end of text, a
stop sequence past ``min_tokens``, ``length``, ``max_time``, the front hanging up), which
finish reason it gets, how many tokens it counts (the generated tokens whose text is
kept), and which pieces a stream may send (text that could still turn into a stop
sequence, or half of a UTF-8 character, is held back, so the pieces always add up to the
final text).

The OpenAI extras are decided here too. Echo reports the prompt; log-probabilities
(``worker_api.engines.logprobs``) come from one scoring pass over prompt and completion
after generation, or, in a stream, from the sampler step by step (a scoring pass could
not run beside a generation still going), each line carrying the entries of the tokens
whose text it completes. A request that asks for neither costs nothing more.

Torch-free: the CTranslate2 worker imports this and must not load torch.
"""

from __future__ import annotations

import os
import random
import time
from abc import ABC, abstractmethod
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import psutil

from fanout.model_files import ModelLoadError
from fanout.params import MAX_SEED, ParamError
from fanout.protocol import GenerationParams, StreamPiece, WorkerCompletion
from worker_api import rounds
from worker_api.engines.endings import EXTRA_TOKENS, Ending
from worker_api.engines.logprobs import (
    Entry,
    Logprobs,
    Scored,
    clean_length,
    entries,
    entries_json,
    spans,
    token_ends,
)

__all__ = ["BAN_BIAS", "MIN_SAMPLING_TEMPERATURE", "Completion", "Decoding", "Engine",
           "ModelLoadError", "Piece", "Prompt"]

# Dividing the logits by a temperature this small (1e-40, say) overflows them to inf and
# sampling fails on NaN probabilities; that close to 0 it is greedy decoding anyway.
MIN_SAMPLING_TEMPERATURE = 1e-6
# OpenAI: a bias of -100 "should result in a ban" of the token. Added as a number it would
# not, against a logit far above the rest, so both engines make it -inf.
BAN_BIAS = -100.0


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
    prompt_text: str | None = None  # with echo
    logprobs: Logprobs | None = None  # with logprobs
    batch: int = 1  # samples decoded in one batch with this one (worker_api.rounds)

    def to_wire(self, worker: dict[str, Any]) -> WorkerCompletion:
        """The completion as the worker answers it (``worker``: who answered)."""
        return WorkerCompletion(
            text=self.text, time=self.time, tokens=self.tokens,
            finish_reason=self.finish_reason, seed=self.seed, worker=worker,
            context_tokens=self.context_tokens, prompt_text=self.prompt_text,
            logprobs=None if self.logprobs is None else entries_json(self.logprobs.entries),
            cumulative_logprob=None if self.logprobs is None else self.logprobs.cumulative)


@dataclass(frozen=True)
class Piece:
    """A stream's piece of text with what came with it: with logprobs, the entries of the
    tokens whose text it completes; with echo, the first piece is the prompt's."""

    text: str
    logprobs: tuple[Entry, ...] | None = None
    prompt_text: str | None = None

    def to_wire(self) -> StreamPiece:
        return StreamPiece(self.text, prompt_text=self.prompt_text,
                           logprobs=None if self.logprobs is None
                           else entries_json(self.logprobs))


@dataclass(frozen=True)
class Prompt:
    """What the model is fed, and what echo reports of it."""

    ids: list[int]
    own: bool  # False: ``ids`` is the <|endoftext|> that stands in for an empty context
    text: str  # echo's prompt_text ("" unless echo asked)


def stop_start(text: str, stops: tuple[str, ...], floor: int = 0) -> int | None:
    """Where ``text`` ends: the start of the first stop sequence that ends past ``floor``
    characters (the text of the first ``min_tokens`` tokens), or None."""
    found = [at for stop in stops if (at := text.find(stop, max(0, floor - len(stop) + 1))) >= 0]
    return min(found) if found else None


def extra_tokens(params: GenerationParams, window: int) -> int:
    """Tokens a completion may take past ``length`` to reach its ``stop_at`` boundary (and
    still fit the model's window)."""
    if params.stop_at == "none" or not params.length:
        return 0
    return max(0, min(EXTRA_TOKENS, window - 1 - params.length))


class Decoding:
    """One completion's text as its tokens arrive (see the module docstring).

    With ``stop_at``, a text that reaches ``length`` tokens inside a word (sentence,
    line, paragraph) goes on for up to ``extra`` tokens to finish it; if it does not by
    then (or time runs out, or the front hangs up), it is cut back to the last boundary
    it reached (``worker_api.engines.endings``). End of text and stop sequences end it as
    they do without. Until the end is known, a stream sends no text past the last
    boundary, so the pieces add up to the text kept.
    """

    def __init__(self, detokenize: Callable[[list[int]], str], eos_token_id: int,
                 params: GenerationParams, extra: int = 0) -> None:
        self.detokenize, self.eos_token_id, self.params = detokenize, eos_token_id, params
        self.ids: list[int] = []
        self.ends: list[int] = []  # where each token's text ends (whole characters only)
        self.text = ""
        self.cut: int | None = None  # where the kept text ends, once known
        self.stopped = False  # a stop sequence decided ``cut``
        self.floor: int | None = 0 if params.min_tokens == 0 else None
        self.end_of_text = False
        self.sent = 0
        self.hold = max((len(stop) for stop in params.stop), default=1) - 1
        self.ending = None if params.stop_at == "none" else Ending(params.stop_at)
        self.limit = params.length + (extra if self.ending is not None else 0)
        self.base: int | None = None  # the text's end at ``length`` tokens, less whitespace

    @property
    def finished(self) -> bool:
        return self.end_of_text or self.cut is not None or len(self.ids) >= self.limit

    @property
    def count(self) -> int:
        """The tokens the completion keeps: past a stop sequence or a boundary, those whose
        text starts before it (end of text is no token of the completion)."""
        if self.cut is None:
            return len(self.ids)
        return 0 if self.cut == 0 else 1 + min(bisect_left(self.ends, self.cut),
                                               len(self.ids) - 1)

    @property
    def settled(self) -> int:
        """How many of the kept tokens have their whole text sent: their entries are final
        (the last token's text may still gain the rest of a character)."""
        ready = bisect_right(self.ends, self.sent)
        if ready == len(self.ids) and len(self.text) > self.sent:
            ready -= 1
        return min(ready, self.count)

    def push(self, token: int) -> str:
        """Take one sampled token; return the text a stream may send now ('' if none)."""
        if self.finished:
            return ""
        if token == self.eos_token_id:
            self.end_of_text = True
            return ""
        self.ids.append(token)
        self.text = self.detokenize(self.ids)
        self.ends.append(max(clean_length(self.text), self.ends[-1] if self.ends else 0))
        if self.floor is None and len(self.ids) >= self.params.min_tokens:
            self.floor = len(self.text)
        if self.floor is not None and self.params.stop:
            self.cut = stop_start(self.text, self.params.stop, self.floor)
            self.stopped = self.cut is not None
        if self.ending is not None and self.cut is None:
            self._look_for_the_end()
        # Sendable: up to where the text ends, or all but what could still begin a stop
        # sequence (and a partial character), and with stop_at not past the last boundary.
        end = (self.cut if self.cut is not None
               else min(len(self.text) - self.hold, self.ends[-1], self._boundary()))
        if end <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:end], end
        return piece

    def _look_for_the_end(self) -> None:
        """Past ``length`` tokens: stop at the first boundary, or cut back at the limit."""
        if len(self.ids) < self.params.length:
            return
        assert self.ending is not None and self.floor is not None  # min_tokens <= length
        whole = self.text[:self.ends[-1]]
        if self.base is None:
            self.base = len(whole.rstrip())
        self.cut = self.ending.reached(whole, self.base, self.floor)
        if self.cut is None and len(self.ids) >= self.limit:
            self._cut_back()

    def _boundary(self) -> int:
        """How far a stream may send while the end is open: the last stable boundary past
        the floor (every end it may get lies at or past it)."""
        if self.ending is None:
            return len(self.text)
        floor = self.floor or 0
        return max(floor, self.ending.stable(self.text[:self.ends[-1]]))

    def _cut_back(self) -> None:
        """The text ends at its last boundary (before a time-out's end, past the floor); if
        ``min_tokens`` leaves none, at ``length`` tokens."""
        assert self.ending is not None
        whole = self.text[:self.ends[-1]] if self.ends else ""
        base = self.base if self.base is not None else len(whole.rstrip())
        floor = len(whole) if self.floor is None else self.floor
        cut = self.ending.end(whole, base, floor)
        if cut is None:  # min_tokens forbids every boundary there is: keep the budget
            cut = self.ends[min(self.params.length, len(self.ends)) - 1] if self.ends else 0
        self.cut = cut

    def completion(self, started: float, seed: int | None, context_tokens: int,
                   abandoned: bool) -> Completion:
        if self.ending is not None and self.cut is None and not self.end_of_text:
            self._cut_back()
        if self.stopped or self.end_of_text:
            reason = "stop"
        elif len(self.ids) >= self.params.length:
            reason = "length"
        else:
            reason = "abandoned" if abandoned else "time"
        text = self.text if self.cut is None else self.text[:self.cut]
        return Completion(text=text, tokens=self.count, finish_reason=reason,
                          time=time.perf_counter() - started, seed=seed,
                          context_tokens=context_tokens)


class Engine(ABC):
    """A tokenizer and a causal LM on one device, ready to sample completions.

    Subclasses load the model and implement ``tokenize``, ``detokenize``, ``sample`` and
    ``score``; ``generate`` and ``stream`` are the worker contract, the same for every
    engine.
    """

    name: str
    window: int  # the model's context window, in tokens
    vocab_size: int  # the model's logits per position: every token id it can take
    eos_token_id: int
    load_seconds: float
    ready: bool = False

    @abstractmethod
    def tokenize(self, text: str) -> list[int]: ...

    @abstractmethod
    def detokenize(self, ids: list[int], special: bool = False) -> str:
        """The text of ``ids``; special tokens (<|endoftext|>) are left out unless
        ``special``, as a completion's text leaves them out."""

    @abstractmethod
    def sample(self, params: GenerationParams, context: list[int], seed: int | None,
               scores: list[Scored] | None = None) -> tuple[Iterator[int], int | None]:
        """Sampled token ids after ``context``, as they come; closing the iterator stops
        generation. Also returns the seed that replays them (None when none can).

        Penalties and ``logit_bias`` apply (a bias of ``BAN_BIAS`` bans the token). Given
        ``scores``, the engine appends each token's ``Scored`` (under the raw logits, with
        ``params.logprobs`` alternatives) before yielding the token."""

    @abstractmethod
    def score(self, ids: list[int], start: int, top: int) -> list[Scored]:
        """The figures of ``ids[start:]`` (start >= 1), each given the ids before it, with
        the ``top`` likeliest tokens at each position: one forward pass."""

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

    def room(self, length: int, max_tokens: int | None) -> int:
        """How many context tokens fit beside ``length`` new ones (and ``max_tokens``)."""
        if length >= self.window:
            raise ParamError("length", f"must be below the model's window of {self.window} "
                                       f"tokens, not {length}")
        room = self.window - length
        return room if max_tokens is None else min(room, max_tokens)

    def context_ids(self, context: str, length: int, max_tokens: int | None) -> list[int]:
        """Token ids to feed: the end of the context, short enough to leave room for ``length``."""
        ids = self.tokenize(context)[-self.room(length, max_tokens):]
        # GPT-2 starts from <|endoftext|> when there is no context to condition on.
        return ids or [self.eos_token_id]

    def prompt(self, params: GenerationParams) -> Prompt:
        """The context (as text or as ids) cut to fit, and with echo its text: as sent when
        whole, else the decoding of the ids kept."""
        self.check_vocabulary(params)
        given = (self.tokenize(params.context) if params.context_ids is None
                 else list(params.context_ids))
        ids = given[-self.room(params.length, params.max_tokens):]
        if not ids:
            return Prompt([self.eos_token_id], own=False, text="")
        text = ""
        if params.echo:
            whole = params.context_ids is None and len(ids) == len(given)
            text = params.context if whole else self.detokenize(ids, special=True)
        return Prompt(ids, own=True, text=text)

    def check_vocabulary(self, params: GenerationParams) -> None:
        """Token ids a request names must be ones the model has logits for."""
        for field, ids in (("context_ids", params.context_ids or ()),
                           ("logit_bias", [token for token, _ in params.logit_bias])):
            if max(ids, default=-1) >= self.vocab_size:
                raise ParamError(field, f"token {max(ids)} is not in the model's vocabulary "
                                        f"(ids 0 to {self.vocab_size - 1})")

    def sample_each(self, params: GenerationParams, context: list[int], seed: int | None,
                    take: Callable[[int], bool]) -> int | None:
        """``sample`` driven the other way: each token is handed to ``take``, and sampling
        stops once it returns True. Returns the seed that replays the sample, as ``sample``.

        A non-streamed completion is generated this way. Engines whose sampler calls back
        more cheaply than it feeds an iterator (CTranslate2's runs in its own thread)
        override it."""
        rounds.leave()  # samples one at a time: requests taken with it need not wait
        tokens, used = self.sample(params, context, seed)
        try:
            for token in tokens:
                if take(token):
                    break
        finally:
            _close(tokens)
        return used

    def generate(self, params: GenerationParams,
                 abandoned: Callable[[], bool] | None = None) -> Completion:
        """Sample up to ``params.length`` new tokens after the context.

        ``abandoned`` is asked after every token; once it says yes (the front stopped
        waiting), generation stops, so a dropped request frees its worker at once.
        """
        run = _Run(self, params, abandoned)
        seed = (self.sample_each(run.sampled, run.prompt.ids, run.wanted_seed, run.take)
                if params.length else params.seed)
        done = run.report.complete(run.completion(seed), run.decoding, None)
        together = rounds.rows()
        return done if together == 1 else replace(done, batch=together)

    def stream(self, params: GenerationParams, abandoned: Callable[[], bool] | None = None
               ) -> Iterator[str | Piece | Completion]:
        """The completion's text as it is generated, in pieces, then the Completion.

        A piece is a ``str``, or a ``Piece`` when echo or logprobs ask for more than text.
        """
        rounds.leave()  # a stream is not batched: requests taken with it need not wait
        run = _Run(self, params, abandoned)
        report, decoding = run.report, run.decoding
        live = params.logprobs is not None
        scores: list[Scored] | None = [] if live else None
        if params.echo:
            yield Piece("", prompt_text=run.prompt.text,
                        logprobs=tuple(report.prompt_entries()) if live else None)
        tokens, seed = (self.sample(run.sampled, run.prompt.ids, run.wanted_seed, scores)
                        if params.length else (iter(()), params.seed))
        try:
            for token in tokens:
                piece = decoding.push(token)
                if piece:
                    yield report.line(piece, decoding, scores) if live else piece
                if run.over():
                    break
        finally:
            _close(tokens)  # stops the engine within the token it is on
        done = run.completion(seed)
        rest = done.text[decoding.sent:]
        if live and (rest or report.streamed < done.tokens):  # the entries left, too
            yield report.line(rest, decoding, scores, upto=done.tokens)
        elif rest:
            yield rest
        yield report.complete(done, decoding, scores)


class _Run:
    """One completion under way: what the engine is asked to sample, and when it must
    stop besides the decoding's own end (``max_time``, the front hanging up)."""

    def __init__(self, engine: Engine, params: GenerationParams,
                 abandoned: Callable[[], bool] | None) -> None:
        self.started = time.perf_counter()
        extra = extra_tokens(params, engine.window)
        # The engine may sample ``extra`` tokens more, and the context leaves room for them.
        self.sampled = replace(params, length=params.length + extra) if extra else params
        self.prompt = engine.prompt(self.sampled)
        self.report = _Report(engine, params, self.prompt)
        self.decoding = Decoding(engine.detokenize, engine.eos_token_id, params, extra)
        self.wanted_seed = (params.seed if params.seed is not None
                            else random.randint(0, MAX_SEED))
        self.deadline = self.started + params.max_time
        self.abandoned = abandoned
        self.gone = False

    def over(self) -> bool:
        """Asked after each token: whether generation ends here."""
        self.gone = self.abandoned is not None and self.abandoned()
        return self.decoding.finished or self.gone or time.perf_counter() >= self.deadline

    def take(self, token: int) -> bool:
        self.decoding.push(token)
        return self.over()

    def completion(self, seed: int | None) -> Completion:
        return self.decoding.completion(self.started, seed, len(self.prompt.ids), self.gone)


def _close(tokens: Iterator[int]) -> None:
    close = getattr(tokens, "close", None)
    if close is not None:
        close()


def is_greedy(params: GenerationParams) -> bool:
    return params.temperature < MIN_SAMPLING_TEMPERATURE


def bans(params: GenerationParams) -> list[int]:
    """The tokens ``logit_bias`` bans."""
    return [token for token, bias in params.logit_bias if bias <= BAN_BIAS]


def reshapes_logits(params: GenerationParams) -> bool:
    """Whether penalties or a bias other than a ban change the logits before sampling."""
    return bool(params.presence_penalty or params.frequency_penalty
                or any(bias > BAN_BIAS for _, bias in params.logit_bias))


class _Report:
    """What a completion reports beyond its text: echo's prompt, logprobs' entries."""

    def __init__(self, engine: Engine, params: GenerationParams, prompt: Prompt) -> None:
        self.engine, self.params, self.prompt = engine, params, prompt
        self.top = params.logprobs or 0
        self.offset = len(prompt.text)  # completion offsets count from the prompt's end
        self.streamed = 0  # completion entries already sent on a line
        self.echoed: list[Entry] = []

    def name(self, token: int) -> str:
        return self.engine.detokenize([token], special=True)

    def prompt_entries(self, scored: Sequence[Scored] | None = None) -> list[Entry]:
        """The prompt's entries (echo with logprobs): scored now unless ``scored`` is given
        (the figures of its tokens after the first, which has none)."""
        ids = self.prompt.ids
        if not (self.params.echo and self.prompt.own):
            return []
        if scored is None:
            scored = self.engine.score(ids, 1, self.top) if len(ids) > 1 else []
        _, ends = token_ends(partial(self.engine.detokenize, special=True), ids)
        text = self.prompt.text
        self.echoed = entries(text, spans(ends, len(ids), len(text)), ids, [None, *scored],
                              self.top, self.name)
        return self.echoed

    def completion_entries(self, decoding: Decoding, text: str, first: int, last: int,
                           scored: Sequence[Scored]) -> list[Entry]:
        """Entries of the kept tokens ``first`` to ``last`` (exclusive) of ``text``."""
        where = spans(decoding.ends, last, len(text))[first:]
        return entries(text, where, decoding.ids[first:last], scored, self.top, self.name,
                       self.offset)

    def line(self, piece: str, decoding: Decoding, scores: list[Scored] | None,
             upto: int | None = None) -> Piece:
        """A stream's piece with the entries it completes (the sampler scored them); the
        last one takes every entry left (``upto``: the completion's token count)."""
        assert scores is not None
        ready = max(decoding.settled if upto is None else upto, self.streamed)
        text = decoding.text[:decoding.cut] if decoding.cut is not None else decoding.text
        fresh = self.completion_entries(decoding, text, self.streamed, ready,
                                        scores[self.streamed:ready])
        self.streamed = ready
        return Piece(piece, logprobs=tuple(fresh))

    def complete(self, done: Completion, decoding: Decoding,
                 scores: list[Scored] | None) -> Completion:
        """``done`` with echo's prompt text and the logprobs, as asked."""
        if self.params.logprobs is None:
            return replace(done, prompt_text=self.prompt.text) if self.params.echo else done
        ids = self.prompt.ids
        if scores is not None:  # scored step by step; the prompt was scored up front
            completion = scores[:done.tokens]
            prompt = self.echoed
        else:  # one pass over both, from the prompt's second token when it is reported
            first = 1 if self.params.echo and self.prompt.own else len(ids)
            whole = ids + decoding.ids[:done.tokens]
            scored = self.engine.score(whole, first, self.top) if len(whole) > first else []
            prompt = self.prompt_entries(scored[:len(ids) - first])
            completion = scored[len(ids) - first:]
        entries_ = [*prompt, *self.completion_entries(decoding, done.text, 0, done.tokens,
                                                      completion)]
        return replace(done, prompt_text=self.prompt.text if self.params.echo else None,
                       logprobs=Logprobs(tuple(entries_), prompt=len(prompt)))
