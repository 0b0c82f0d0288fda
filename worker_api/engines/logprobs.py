"""Log-probabilities as a worker reports them: OpenAI's legacy completions shape.

The engines only score (``Engine.score``, or per step while sampling); this module turns
their figures and the decoded text into entries, the same way for both: one entry per
token, its text such that the entries join to exactly the text reported (a token ending
inside a UTF-8 character gets "" and the next one the character), its character offset,
its log-probability under the model's raw logits (log-softmax before temperature,
top-k/top-p, penalties or bias, as vLLM reports by default) and the likeliest tokens'.

Torch-free: the CTranslate2 worker imports this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fanout.protocol import LogprobsJson

# What a byte-level BPE decodes half of a multi-byte character to, until the rest comes.
PARTIAL_CHARACTER = "\ufffd"
# JSON has no -Infinity: a log-probability is reported no lower than this (vLLM's floor).
_FLOOR = -9999.0


@dataclass(frozen=True)
class Scored:
    """The model's figures at one position: the log-probability of the token there, and
    the likeliest tokens' (id, log-probability), best first."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Entry:
    """One token as reported: its text, where that starts, its log-probability and the
    likeliest alternatives by text (None for a prompt's first token, which has none)."""

    token: str
    offset: int
    logprob: float | None
    top: dict[str, float] | None


@dataclass(frozen=True)
class Logprobs:
    """A completion's entries, the prompt's first when echoed."""

    entries: tuple[Entry, ...]
    prompt: int  # how many entries are the prompt's

    @property
    def cumulative(self) -> float:
        """The completion's log-probability (the front ranks best_of samples by it)."""
        return sum(e.logprob for e in self.entries[self.prompt:] if e.logprob is not None)


def entries_json(entries: Sequence[Entry]) -> LogprobsJson:
    """OpenAI's ``logprobs`` object: four lists, one item per token."""
    return {"tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [e.top for e in entries],
            "text_offset": [e.offset for e in entries]}


def clean_length(text: str) -> int:
    """How much of ``text`` is whole characters: a trailing partial one is not yet text."""
    return len(text.rstrip(PARTIAL_CHARACTER))


def token_ends(detokenize: Callable[[list[int]], str], ids: list[int]) -> tuple[str, list[int]]:
    """The text of ``ids`` and where each token's text ends in it (its clean length).

    Decoded from the last whole-character boundary on, not from the start each time, so a
    prompt of the window's length costs a window's worth of decoding, not its square.
    """
    done = ""
    pending: list[int] = []
    ends: list[int] = []
    for token in ids:
        pending.append(token)
        text = done + detokenize(pending)
        if not text.endswith(PARTIAL_CHARACTER):
            done, pending = text, []
        ends.append(max(clean_length(text), ends[-1] if ends else 0))
    text = done + detokenize(pending) if pending else done
    return text, ends


def spans(ends: Sequence[int], count: int, text_length: int) -> list[tuple[int, int]]:
    """(start, end) of the first ``count`` tokens' texts within a text ``text_length`` long.

    The last token pushed also takes a trailing partial character; every span is clipped
    to the text, which a stop sequence may have cut short.
    """
    result = []
    for i in range(count):
        start = ends[i - 1] if i else 0
        end = ends[i] if i + 1 < len(ends) else text_length
        result.append((min(start, text_length), min(end, text_length)))
    return result


def entries(text: str, spans_: Sequence[tuple[int, int]], ids: Sequence[int],
            scored: Sequence[Scored | None], top: int, name: Callable[[int], str],
            offset: int = 0) -> list[Entry]:
    """One entry per token; ``offset`` is where ``text`` starts in the text reported."""
    return [Entry(text[start:end], offset + start,
                  None if figures is None else _floored(figures.logprob),
                  None if figures is None else top_logprobs(figures, token, top, name))
            for (start, end), token, figures in zip(spans_, ids, scored, strict=True)]


def top_logprobs(scored: Scored, chosen: int, top: int,
                 name: Callable[[int], str]) -> dict[str, float]:
    """The ``top`` likeliest tokens by text, and the chosen one if it is not among them
    (vLLM's rule), likeliest first; two tokens with the same text keep the likelier."""
    candidates = list(scored.top[:top])
    if all(token != chosen for token, _ in candidates):
        candidates.append((chosen, scored.logprob))
    candidates.sort(key=lambda pair: -pair[1])
    shown: dict[str, float] = {}
    for token, logprob in candidates:
        shown.setdefault(name(token), _floored(logprob))
    return shown


def _floored(logprob: float) -> float:
    return max(float(logprob), _FLOOR)
