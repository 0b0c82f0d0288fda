"""Where a completion may end (``stop_at``): after a whole word, a sentence, a line or a
paragraph.

A boundary is a character position ``p`` such that ``text[:p]`` ends cleanly: never inside a
word, never on trailing whitespace. ``Ending.boundaries`` lists those the text so far
proves (a word that ends the text may still go on: "Sta" may become "State", so it is no
boundary until the next character shows it ended); ``Ending.stable`` is the last one that
no later text can take back, as far as a stream may send. ``Decoding``
(``worker_api.engines.base``) decides with them where the text ends.

Words: runs of letters and digits, joined by an apostrophe between letters ("don't") or
a point or comma between digits ("3.14"); each CJK character is a word of its own; any
other character that is not whitespace (punctuation) ends where it stands. Sentences end
after ``.``, ``!``, ``?`` or ``…`` (and closing quotes or brackets) followed by whitespace
or the end of the text, not after a single capital other than "I" or a common title ("J.", "Dr.").
Lines and paragraphs end at their last character that is not whitespace, before a
newline (a blank line, for a paragraph).

Torch-free, as ``base`` is.
"""

from __future__ import annotations

import re

from fanout.protocol import EXTRA_TOKENS

__all__ = ["EXTRA_TOKENS", "Ending"]


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_LETTER = rf"[^\W\d_{_CJK}]"
_WORD_CHAR = rf"[^\W{_CJK}]"
_JOINER = rf"(?:(?<={_LETTER})['\u2019](?={_LETTER})|(?<=\d)[.,](?=\d))"
# A word, a CJK character, or one character of punctuation: a boundary follows each.
_WORDS = re.compile(rf"{_WORD_CHAR}+(?:{_JOINER}{_WORD_CHAR}+)*|[{_CJK}]|[^\s\w]")
_SENTENCE = re.compile(r"(?<!\b[A-HJ-Z])(?<!\bMr)(?<!\bMs)(?<!\bDr)(?<!\bSt)(?<!\bMrs)"
                       r"(?<!\bProf)[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)")
_LINE = re.compile(r"\S[ \t]*\n")
_PARAGRAPH = re.compile(r"\S[ \t]*\n[ \t]*\n")


def _unsure(text: str, p: int) -> bool:
    """Whether more text could still join across ``p`` into one word (``p`` near the end)."""
    n = len(text)
    if p == n:
        last, before = text[-1], text[-2] if n > 1 else ""
        return bool(re.match(_WORD_CHAR, last)) or \
            (last in "'\u2019" and bool(re.match(_LETTER, before))) or \
            (last in ".," and before.isdigit())
    if p == n - 1:
        return (text[p] in "'\u2019" and bool(re.match(_LETTER, text[p - 1]))) or \
            (text[p] in ".," and text[p - 1].isdigit())
    return False


class Ending:
    """The boundaries of one kind: "word", "sentence", "line" or "paragraph"."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.last_stable = 0  # ``stable``'s last answer: no later text takes it back

    def boundaries(self, text: str, start: int = 0) -> list[int]:
        """Positions (> ``start``, ascending) where ``text`` may end; a sentence's end that
        is the text's end counts (the sentence is over, though more closing marks could
        follow). ``start`` must be a boundary (or 0): no word runs across it."""
        if self.kind == "word":
            return [m.end() for m in _WORDS.finditer(text, start)
                    if not _unsure(text, m.end())]
        if self.kind == "sentence":
            return [m.end() for m in _SENTENCE.finditer(text, start)]
        found = (_LINE if self.kind == "line" else _PARAGRAPH).finditer(text, start)
        return [m.start() + 1 for m in found]

    def stable(self, text: str) -> int:
        """The last boundary later text cannot move or take back; 0 if none.

        Called on each longer version of one text (a stream's): the scan starts at the
        previous answer, which stays a boundary, so a token costs its tail, not the text.
        """
        ends = self.boundaries(text, self.last_stable)
        if self.kind == "sentence" and ends and ends[-1] == len(text):
            ends.pop()  # '."' may follow: the sentence would end one character later
        if ends:
            self.last_stable = ends[-1]
        return self.last_stable

    def end(self, text: str, base: int, floor: int) -> int | None:
        """Where ``text`` ends: its first boundary at or past ``base`` (the budget's end),
        else its last one, none before ``floor`` (the first ``min_tokens``' text); any
        kind but words falls back to words; with no floor an empty text ends cleanly."""
        for kind in dict.fromkeys((self.kind, "word")):
            ends = [p for p in Ending(kind).boundaries(text) if p >= floor]
            later = [p for p in ends if p >= base]
            if later or ends:
                return later[0] if later else ends[-1]
        return 0 if floor == 0 else None

    def reached(self, text: str, base: int, floor: int) -> int | None:
        """The first boundary at or past ``base`` and ``floor``, if the text reached one."""
        return next((p for p in self.boundaries(text) if p >= max(base, floor)), None)
