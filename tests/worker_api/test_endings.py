"""Clean endings (``stop_at``): where a text may end, how the Decoding gets there, and the
worker contract over both engines (never inside a word, counts exact, streams add up)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fanout.layout import Model
from fanout.protocol import GenerationParams
from tests.worker_api.conftest import ENGINES, load
from worker_api.engines.base import Completion, Decoding, Engine, Piece
from worker_api.engines.endings import EXTRA_TOKENS, Ending


def params(**changes: object) -> GenerationParams:
    base = {"context": "The nation", "length": 8, "temperature": 1.0, "top_k": 40,
            "top_p": 0.9, "max_time": 600.0}  # no test waits on the clock
    return GenerationParams(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(("kind", "text", "ends"), [
    ("word", "the Government of the Sta", [3, 14, 17, 21]),  # "Sta" may go on
    ("word", "Hello, world.", [5, 6, 12, 13]),
    ("word", "don't stop", [5]),  # the apostrophe joins; "stop" may go on
    ("word", "don'", []),  # "don't" may follow
    ("word", "pi is 3.14 or 3.", [2, 5, 10, 13]),
    ("word", "a \u4f60\u597d", [1, 3, 4]),  # each CJK character is a word
    ("sentence", "He ran. Dr. Who sat. J. Smith", [7, 20]),
    ("sentence", 'She said "no." Then she left!', [14, 29]),
    ("line", "one\ntwo \n\nthree", [3, 7]),
    ("paragraph", "one\ntwo \n\nthree\n\n", [7, 15]),
])
def test_boundaries(kind: str, text: str, ends: list[int]) -> None:
    assert Ending(kind).boundaries(text) == ends


def test_a_sentence_that_ends_the_text_is_not_yet_stable() -> None:
    assert Ending("sentence").stable("He ran. She sat.") == 7  # '."' may follow
    assert Ending("word").stable("He ran. She s") == 11


@pytest.mark.parametrize("kind", ["word", "sentence", "line", "paragraph"])
def test_stable_read_token_by_token_equals_stable_read_whole(kind: str) -> None:
    # A stream asks on every longer prefix and the scan starts at its last answer.
    text = ("Dr. Smith said: \"don't go.\" It cost 3.14 or 2,5 \u6f22\u5b57 units!\n"
            "Next line\n\nA new paragraph. I. Done")
    growing = Ending(kind)
    for end in range(1, len(text) + 1):
        assert growing.stable(text[:end]) == Ending(kind).stable(text[:end]), text[:end]


def test_the_end_is_the_first_boundary_past_the_budget_else_the_last_before() -> None:
    word = Ending("word")
    assert word.end("the Government of the State of", 25, 0) == 27
    assert word.end("the Government of the Sta", 25, 0) == 21
    assert word.end("Sta", 3, 0) == 0  # no whole word: nothing
    assert word.end("the Sta", 7, 5) is None  # min_tokens' text forbids "the"
    # No sentence ends: words do.
    assert Ending("sentence").end("no end in sight", 15, 0) == 9


# A tokenizer of whole pieces, so that each test names its tokens' text.
PIECES = ["The", " Government", " of", " the", " Sta", "te", " of", " California", ".",
          " It", " is", " big", "\n", "Next", " line", "\n\n", "New"]


def decode(length: int, stop_at: str, extra: int = EXTRA_TOKENS, min_tokens: int = 0,
           upto: int = len(PIECES)) -> tuple[Completion, str]:
    """The Decoding of PIECES (the first ``upto``, then time runs out) and its stream."""
    decoding = Decoding(lambda ids: "".join(PIECES[i] for i in ids), -1,
                        params(length=length, stop_at=stop_at, min_tokens=min_tokens), extra)
    streamed = ""
    for token in range(upto):
        streamed += decoding.push(token)
        if decoding.finished:
            break
    done = decoding.completion(0.0, 1, 1, abandoned=False)
    return done, streamed + done.text[decoding.sent:]


@pytest.mark.parametrize(("length", "stop_at", "extra", "text", "tokens"), [
    (5, "none", 8, "The Government of the Sta", 5),
    (5, "word", 8, "The Government of the State", 6),  # one token more finishes the word
    (5, "word", 1, "The Government of the", 4),  # the cap: cut back to the last word
    (4, "word", 8, "The Government of the", 4),  # at a boundary already
    (9, "sentence", 8, "The Government of the State of California.", 9),
    (10, "sentence", 8, "The Government of the State of California.", 9),  # cut back
    (10, "line", 8, "The Government of the State of California. It is big", 12),
    (14, "line", 8, "The Government of the State of California. It is big\nNext line", 15),
    (14, "paragraph", 8, "The Government of the State of California. It is big\nNext line",
     15),
])
def test_the_decoding_ends_cleanly(length: int, stop_at: str, extra: int, text: str,
                                   tokens: int) -> None:
    done, streamed = decode(length, stop_at, extra)
    assert (done.text, done.tokens, done.finish_reason) == (text, tokens, "length")
    assert streamed == done.text  # nothing past the end was sent


def test_time_running_out_cuts_back_to_the_last_word() -> None:
    done, streamed = decode(10, "word", upto=5)
    assert (done.text, done.tokens, done.finish_reason) == ("The Government of the", 4, "time")
    assert streamed == done.text


def test_a_boundary_inside_min_tokens_does_not_count() -> None:
    done, _ = decode(5, "word", extra=0, min_tokens=5)  # no boundary past "Sta"
    assert (done.text, done.tokens) == ("The Government of the Sta", 5)
    done, _ = decode(5, "word", extra=2, min_tokens=5)
    assert (done.text, done.tokens) == ("The Government of the State", 6)


def continues(engine: Engine, done: Completion, seed: int, length: int) -> str:
    """The same sample without stop_at, longer: what the model went on to write."""
    return engine.generate(params(length=length + EXTRA_TOKENS + 20, seed=seed)).text


def test_no_text_ends_inside_a_word_and_counts_are_exact(engine: Engine) -> None:
    for seed in range(30):
        length = 5 + seed % 16
        done = engine.generate(params(length=length, seed=seed, stop_at="word"))
        after = continues(engine, done, seed, length)
        assert after.startswith(done.text), seed
        following = after[len(done.text):len(done.text) + 1]
        # The next character is no word's; or the text ends with a non-word character.
        assert not (done.text and done.text[-1].isalnum() and following.isalnum()), seed
        assert done.text == done.text.rstrip() and done.finish_reason == "length"
        assert done.tokens <= length + EXTRA_TOKENS
        # Exact: the counted tokens' text reaches the end kept, one fewer does not.
        kept = engine.generate(params(length=done.tokens, seed=seed)).text
        fewer = engine.generate(params(length=max(1, done.tokens - 1), seed=seed)).text
        assert kept.startswith(done.text) and (done.tokens <= 1 or len(fewer) < len(done.text))


@pytest.mark.parametrize("stop_at", ["sentence", "line", "paragraph"])
def test_sentences_lines_and_paragraphs_end_at_theirs_or_a_word(engine: Engine,
                                                               stop_at: str) -> None:
    for seed in range(8):
        done = engine.generate(params(length=12, seed=seed, stop_at=stop_at))
        after = continues(engine, done, seed, 12)
        assert after.startswith(done.text)
        end = len(done.text)
        assert end == 0 or end in Ending(stop_at).boundaries(after) \
            or end in Ending("word").boundaries(after), (seed, done.text)


@pytest.mark.parametrize("stop_at", ["word", "sentence", "line"])
def test_a_stream_adds_up_to_the_clean_text(engine: Engine, stop_at: str) -> None:
    for seed in range(4):
        asked = params(length=10, seed=seed, stop_at=stop_at)
        whole = engine.generate(asked)
        *pieces, done = engine.stream(asked)
        assert isinstance(done, Completion)
        assert "".join(map(str, pieces)) == done.text == whole.text
        assert done.tokens == whole.tokens
        # With logprobs (sampled step by step on CTranslate2): an entry per kept token.
        *pieces, done = engine.stream(params(length=10, seed=seed, stop_at=stop_at,
                                             logprobs=0))
        assert isinstance(done, Completion) and done.logprobs is not None
        assert "".join(getattr(p, "text", "") for p in pieces) == done.text
        streamed = sum(len(p.logprobs or ()) for p in pieces if isinstance(p, Piece))
        assert len(done.logprobs.entries) == done.tokens == streamed


def test_a_time_out_ends_at_a_word_too(engine: Engine) -> None:
    done = engine.generate(params(length=200, max_time=1e-9, seed=1, stop_at="word"))
    assert done.finish_reason == "time" and done.tokens <= 1
    assert done.text in ("", continues(engine, done, 1, 1)[:len(done.text)])


def test_stop_at_fits_the_window(engine: Engine) -> None:
    done = engine.generate(params(context="word " * 500, length=engine.window - 1, seed=1,
                                  stop_at="word"))
    assert done.context_tokens == 1 and done.tokens <= engine.window - 1


@pytest.mark.parametrize("name", ENGINES)
def test_end_of_text_still_ends_it(talks_to_the_end: Path, name: str) -> None:
    engine = load(name, Model("eos-first", talks_to_the_end))
    ended = engine.generate(params(length=20, temperature=0, stop_at="sentence"))
    assert (ended.text, ended.tokens, ended.finish_reason) == ("", 0, "stop")
