"""OpenAI's completion extras on both engines: the prompt as ids, logprobs, echo, penalties,
logit_bias. Log-probabilities are checked against the model's logits computed directly."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from fanout.layout import Model
from fanout.params import ParamError
from fanout.protocol import GenerationParams
from tests.worker_api.conftest import ENGINES, load
from tests.worker_api.test_engines import params
from worker_api.engines.base import Completion, Decoding, Engine, Piece
from worker_api.engines.logprobs import Entry, spans

TOLERANCE = 1e-3
CONTEXT = "It was the best of times"


def sampled_ids(engine: Engine, asked: GenerationParams, live: bool = False) -> list[int]:
    """The ids ``engine.generate(asked)`` keeps (``live``: those a stream with logprobs
    keeps), drawn again by the same sampler with the same seed."""
    tokens, _ = engine.sample(asked, engine.prompt(asked).ids, asked.seed, [] if live else None)
    ids: list[int] = []
    for token in tokens:
        if token == engine.eos_token_id or len(ids) == asked.length:
            break
        ids.append(token)
    return ids


def direct_logprobs(engine: Engine, ids: list[int]) -> np.ndarray:
    """log_softmax of the model's logits over ``ids``, outside the engine's own code:
    transformers' forward, or CTranslate2's ``forward_batch``."""
    if engine.name == "transformers":
        import torch

        with torch.no_grad():
            logits = engine.model(torch.tensor([ids])).logits[0].float()  # type: ignore[attr-defined]
        return torch.log_softmax(logits, dim=-1).numpy()
    rows = engine.generator.forward_batch([ids], return_log_probs=True)  # type: ignore[attr-defined]
    return np.asarray(rows)[0]


def check_scores(entries: Sequence[Entry], sequence: list[int], start: int, rows: np.ndarray,
                 top: int, name: Callable[[int], str]) -> None:
    """The entries of ``sequence[start:]``: position p's token under row p - 1 (position 0
    has none), its ``top`` likeliest alternatives plus itself."""
    assert len(entries) == len(sequence) - start
    for position, entry in enumerate(entries, start):
        if position == 0:
            assert entry.logprob is None and entry.top is None
            continue
        row, token = rows[position - 1], sequence[position]
        assert entry.logprob == pytest.approx(row[token], abs=TOLERANCE)
        expected: dict[str, float] = {}
        for candidate in [*np.argsort(-row)[:top], token]:
            expected.setdefault(name(int(candidate)), float(row[candidate]))
        assert entry.top is not None and len(entry.top) == len(expected)
        for key, value in entry.top.items():
            assert value == pytest.approx(expected[key], abs=TOLERANCE)


def check_text(done: Completion) -> None:
    """The entries join to the text reported (with echo, the prompt's first), each offset
    where its token's text starts."""
    assert done.logprobs is not None
    tokens = [entry.token for entry in done.logprobs.entries]
    assert "".join(tokens) == (done.prompt_text or "") + done.text
    assert [entry.offset for entry in done.logprobs.entries] == [
        len("".join(tokens[:i])) for i in range(len(tokens))]


def name_of(engine: Engine) -> Callable[[int], str]:
    return lambda token: engine.detokenize([token], special=True)


@pytest.mark.parametrize("echo", [False, True])
def test_logprobs_are_the_models_log_softmax(engine: Engine, echo: bool) -> None:
    asked = params(context=CONTEXT, length=12, seed=7, logprobs=3, echo=echo)
    done = engine.generate(asked)
    context, ids = engine.tokenize(CONTEXT), sampled_ids(engine, asked)
    assert done.logprobs is not None and done.tokens == len(ids) == 12
    assert done.logprobs.prompt == (len(context) if echo else 0)
    rows = direct_logprobs(engine, context + ids)
    first = 0 if echo else len(context)
    check_scores(done.logprobs.entries, context + ids, first, rows, 3, name_of(engine))
    check_text(done)
    assert done.prompt_text == (CONTEXT if echo else None)
    completion = done.logprobs.entries[done.logprobs.prompt:]
    assert done.logprobs.cumulative == pytest.approx(sum(e.logprob or 0 for e in completion))


def test_a_float32_conversion_reports_what_transformers_computes(tiny_model_dir: Path) -> None:
    from fanout.convert import ensure_converted
    from worker_api.engines.ctranslate2_engine import CTranslate2Engine

    model = Model("tiny", tiny_model_dir)
    converted, _ = ensure_converted(model, "float32")
    exact, reference = CTranslate2Engine(model, converted, "cpu", "float32"), load(
        "transformers", model)
    context = exact.tokenize(CONTEXT)
    for live in (False, True):  # one scoring pass; CTranslate2's steps, sampled by the worker
        asked = params(context=CONTEXT, length=10, seed=2, logprobs=2, echo=True)
        if live:
            *_, done = exact.stream(asked)
        else:
            done = exact.generate(asked)
        assert isinstance(done, Completion) and done.logprobs is not None
        ids = sampled_ids(exact, asked, live)
        check_scores(done.logprobs.entries, context + ids, 0,
                     direct_logprobs(reference, context + ids), 2, name_of(exact))


def test_a_stream_sends_each_entry_once_with_its_text(engine: Engine) -> None:
    asked = params(context=CONTEXT, length=20, seed=4, logprobs=1, echo=True)
    first, *pieces, done = engine.stream(asked)
    assert isinstance(first, Piece) and isinstance(done, Completion)
    assert (first.text, first.prompt_text) == ("", CONTEXT)
    lines = [piece for piece in pieces if isinstance(piece, Piece) and piece.logprobs is not None]
    assert len(lines) == len(pieces)
    entries_sent = [*(first.logprobs or ()), *(e for line in lines for e in line.logprobs or ())]
    assert done.logprobs is not None and entries_sent == list(done.logprobs.entries)
    assert "".join(line.text for line in lines) == done.text
    context = engine.tokenize(CONTEXT)
    ids = sampled_ids(engine, asked, live=True)
    check_scores(done.logprobs.entries, context + ids, 0,
                 direct_logprobs(engine, context + ids), 1, name_of(engine))
    check_text(done)


def test_a_stream_cut_by_a_stop_sequence_sends_the_kept_entries(engine: Engine) -> None:
    *_, whole = engine.stream(params(length=30, seed=5, logprobs=0))
    assert isinstance(whole, Completion)
    stop = whole.text[9:11]
    *pieces, done = engine.stream(params(length=30, seed=5, logprobs=0, stop=(stop,)))
    assert isinstance(done, Completion) and done.logprobs is not None
    assert done.finish_reason == "stop" and done.text == whole.text[:whole.text.find(stop)]
    lines = [e for piece in pieces if isinstance(piece, Piece) for e in piece.logprobs or ()]
    assert lines == list(done.logprobs.entries) and len(lines) == done.tokens
    assert "".join(p.text if isinstance(p, Piece) else str(p) for p in pieces) == done.text
    check_text(done)


def test_a_stop_sequence_keeps_the_tokens_its_text_starts_in(engine: Engine) -> None:
    whole = engine.generate(params(length=30, temperature=0, logprobs=0))
    assert whole.logprobs is not None
    full = whole.logprobs.entries
    # A stop sequence that first occurs one character into a token of three or more.
    inside, stop = next((e, whole.text[e.offset + 1:e.offset + 3]) for e in full
                        if len(e.token) > 2 and whole.text.find(
                            whole.text[e.offset + 1:e.offset + 3]) == e.offset + 1)
    cut = engine.generate(params(length=30, temperature=0, logprobs=0, stop=(stop,)))
    assert cut.logprobs is not None and cut.text == whole.text[:inside.offset + 1]
    kept = cut.logprobs.entries
    assert cut.tokens == len(kept) == full.index(inside) + 1
    assert [(e.token, e.offset) for e in kept] == [
        *((e.token, e.offset) for e in full[:len(kept) - 1]), (inside.token[:1], inside.offset)]
    assert [e.logprob for e in kept] == pytest.approx([e.logprob for e in full[:len(kept)]],
                                                      abs=TOLERANCE)
    check_text(cut)
    # The same count when no logprobs are asked for.
    assert engine.generate(params(length=30, temperature=0, stop=(stop,))).tokens == cut.tokens


def test_top_logprobs_hold_the_chosen_token(engine: Engine) -> None:
    for top in (0, 5):
        done = engine.generate(params(length=10, seed=1, logprobs=top))
        assert done.logprobs is not None
        for entry in done.logprobs.entries:
            assert entry.top is not None and 1 <= len(entry.top) <= top + 1
            assert entry.logprob in entry.top.values()


def test_entries_split_a_character_across_tokens(engine: Engine) -> None:
    text = "a \ua66e b"  # a character of three tokens: the first two end inside it
    ids = engine.tokenize(text)
    decoding = Decoding(engine.detokenize, engine.eos_token_id, params(length=len(ids)))
    for token in ids:
        decoding.push(token)
    pieces = [decoding.text[a:b] for a, b in spans(decoding.ends, decoding.count,
                                                    len(decoding.text))]
    assert "".join(pieces) == text and "" in pieces and len(pieces) == len(ids)
    echoed = engine.generate(params(context=text, length=0, echo=True, logprobs=0))
    assert echoed.logprobs is not None
    assert [e.token for e in echoed.logprobs.entries] == pieces


def test_echo_reports_the_prompt(engine: Engine) -> None:
    done = engine.generate(params(context=CONTEXT, length=4, seed=1, echo=True))
    assert done.prompt_text == CONTEXT and done.logprobs is None
    assert done.text == engine.generate(params(context=CONTEXT, length=4, seed=1)).text
    short = engine.generate(params(context=CONTEXT, length=4, seed=1, echo=True,
                                   max_tokens=3))
    assert short.prompt_text == engine.detokenize(engine.tokenize(CONTEXT)[-3:])
    ids = engine.generate(params(context_ids=(50256, 15496, 995), length=1, echo=True))
    assert ids.prompt_text == "<|endoftext|>Hello world"


def test_length_zero_with_echo_only_scores_the_prompt(engine: Engine) -> None:
    context = engine.tokenize(CONTEXT)
    done = engine.generate(params(context=CONTEXT, length=0, echo=True, logprobs=0))
    assert (done.text, done.tokens, done.finish_reason) == ("", 0, "length")
    assert done.logprobs is not None and done.logprobs.cumulative == 0
    check_scores(done.logprobs.entries, context, 0, direct_logprobs(engine, context), 0,
                 name_of(engine))
    check_text(done)


def test_a_bias_of_100_makes_every_token_that_one(engine: Engine) -> None:
    token = engine.tokenize(" whale")[0]
    done = engine.generate(params(length=10, seed=3, logit_bias=((token, 100.0),)))
    assert (done.text, done.tokens) == (engine.detokenize([token] * 10), 10)


@pytest.mark.parametrize("name", ENGINES)
def test_a_ban_on_the_end_of_text_holds_it_off(talks_to_the_end: Path, name: str) -> None:
    engine = load(name, Model("eos-first", talks_to_the_end))
    ban = ((engine.eos_token_id, -100.0),)
    for asked in (params(length=6, temperature=0, logit_bias=ban),
                  params(length=6, seed=1, logit_bias=ban),
                  params(length=6, seed=1, logit_bias=ban, presence_penalty=0.5)):
        done = engine.generate(asked)
        assert (done.tokens, done.finish_reason) == (6, "length")
    # Without the ban, min_tokens holds the end off on the worker's own sampler too.
    held = engine.generate(params(length=20, seed=1, min_tokens=4, presence_penalty=0.5))
    assert (held.tokens, held.finish_reason) == (4, "stop")


def repeats(ids: list[int]) -> int:
    return len(ids) - len(set(ids))


def test_penalties_make_fewer_repeats(engine: Engine) -> None:
    greedy = params(length=40, temperature=0, seed=1)
    plain = repeats(sampled_ids(engine, greedy))
    assert plain > 0  # a random model's greedy text loops
    for penalty in ({"presence_penalty": 2.0}, {"frequency_penalty": 2.0}):
        penalised = params(length=40, temperature=0, seed=1, **penalty)
        assert repeats(sampled_ids(engine, penalised)) < plain
        assert engine.generate(penalised).tokens == 40


def test_penalised_sampling_keeps_the_contract(engine: Engine) -> None:
    """Abandonment, max_time and stop sequences, on CTranslate2 with the worker sampling."""
    asked: list[int] = []

    def abandoned() -> bool:  # the front hangs up after the third token
        asked.append(1)
        return len(asked) >= 3
    penalty = {"frequency_penalty": 0.5}
    done = engine.generate(params(length=40, temperature=0, **penalty), abandoned=abandoned)
    assert (done.finish_reason, done.tokens) == ("abandoned", 3)
    timed_out = engine.generate(params(length=200, max_time=1e-9, seed=1, **penalty))
    assert timed_out.finish_reason == "time" and timed_out.tokens < 200
    full = engine.generate(params(length=30, temperature=0, **penalty))
    stop = full.text[10:12]
    cut = engine.generate(params(length=30, temperature=0, stop=(stop,), **penalty))
    assert cut.text == full.text[:full.text.find(stop)] and cut.finish_reason == "stop"


def test_seeds_repeat_when_penalties_apply(engine: Engine) -> None:
    """On CTranslate2 this is the worker's own sampler."""
    asked = params(length=12, seed=3, frequency_penalty=0.5, presence_penalty=0.1)
    first, again = engine.generate(asked), engine.generate(asked)
    assert (first.text, first.seed) == (again.text, 3)
    assert engine.generate(params(length=12, seed=4, frequency_penalty=0.5)).text != first.text
    unseeded = engine.generate(params(length=12, frequency_penalty=0.5))
    assert unseeded.seed is not None
    assert engine.generate(params(length=12, seed=unseeded.seed,
                                  frequency_penalty=0.5)).text == unseeded.text


def test_context_ids_sample_as_the_context_does(engine: Engine) -> None:
    ids = tuple(engine.tokenize(CONTEXT))
    assert engine.generate(params(context_ids=ids, length=10, seed=5)).text == (
        engine.generate(params(context=CONTEXT, length=10, seed=5)).text)
    window = engine.generate(params(context_ids=ids * 40, length=56, seed=1))
    assert window.context_tokens == engine.window - 56


@pytest.mark.parametrize(("field", "changes"), [
    ("context_ids", {"context_ids": (1, 50257)}),
    ("logit_bias", {"logit_bias": ((50257, 1.0),)}),
])
def test_ids_outside_the_vocabulary_are_refused_by_name(engine: Engine, field: str,
                                                        changes: dict[str, object]) -> None:
    assert engine.vocab_size == 50257
    with pytest.raises(ParamError) as refused:
        engine.generate(params(**changes))
    assert refused.value.field == field and "50256" in refused.value.reason
