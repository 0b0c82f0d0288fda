"""The worker contract, run against both engines: a real (tiny) GPT-2 sampled in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from fanout.layout import Model
from fanout.params import ParamError
from fanout.protocol import GenerationParams
from tests.worker_api.conftest import ENGINES, load
from worker_api.engines.base import Completion, Engine


def params(**changes: object) -> GenerationParams:
    base = {"context": "The nation", "length": 8, "temperature": 1.0, "top_k": 40,
            "top_p": 0.9, "max_time": 600.0}  # no test waits on the clock
    return GenerationParams(**{**base, **changes})  # type: ignore[arg-type]


def test_the_gpt2_tokenizer_is_the_real_one(engine: Engine) -> None:
    assert engine.tokenize("Hello world") == [15496, 995]
    assert engine.detokenize([15496, 995]) == "Hello world"
    assert engine.eos_token_id == 50256 and engine.window == 256


def test_sampling_with_a_seed_is_reproducible(engine: Engine) -> None:
    first, again = engine.generate(params(seed=3)), engine.generate(params(seed=3))
    assert (first.text, first.tokens, first.seed) == (again.text, again.tokens, 3)
    assert engine.generate(params(seed=4)).text != first.text


def test_a_reported_seed_replays_its_sample(engine: Engine) -> None:
    unseeded = engine.generate(params(length=12))
    if unseeded.seed is None:  # CTranslate2 cannot replay an unseeded sample, and says so
        assert engine.name == "ctranslate2"
    else:
        assert engine.generate(params(length=12, seed=unseeded.seed)).text == unseeded.text


def test_finish_reasons(engine: Engine) -> None:
    assert engine.generate(params(length=5, seed=1)).finish_reason == "length"
    timed_out = engine.generate(params(length=200, max_time=1e-9, seed=1))
    assert timed_out.finish_reason == "time" and timed_out.tokens < 200


def test_generation_stops_once_abandoned(engine: Engine) -> None:
    asked = []

    def abandoned() -> bool:  # the front hangs up after the third token
        asked.append(1)
        return len(asked) >= 3
    done = engine.generate(params(length=40, temperature=0, seed=1), abandoned=abandoned)
    assert done.finish_reason == "abandoned" and done.tokens == 3 and len(asked) == 3
    assert engine.generate(params(length=40, temperature=0, seed=1),
                           abandoned=lambda: False).tokens == 40


def test_an_error_while_generating_reaches_the_caller_and_the_engine_goes_on(
        engine: Engine) -> None:
    # CTranslate2 runs the per-token checks in its decoding thread's callback, which
    # must neither swallow an error nor leave decoding running.
    asked = []

    def failing() -> bool:
        asked.append(1)
        raise OSError("the socket check failed")
    with pytest.raises(OSError, match="socket check"):
        engine.generate(params(length=40, temperature=0, seed=1), abandoned=failing)
    assert len(asked) == 1
    assert engine.generate(params(length=5, temperature=0, seed=1)).tokens == 5


def test_a_stop_sequence_ends_the_text_before_it(engine: Engine) -> None:
    full = engine.generate(params(length=30, temperature=0))
    stop = full.text[10:12]
    cut = engine.generate(params(length=30, temperature=0, stop=(stop, "never-there")))
    assert cut.text == full.text[:full.text.find(stop)]
    assert cut.finish_reason == "stop" and cut.tokens < full.tokens


def test_min_tokens_passes_over_a_stop_sequence_inside_them(engine: Engine) -> None:
    full = engine.generate(params(length=30, temperature=0))
    early = engine.detokenize(engine.tokenize(full.text)[:2])
    stop = early[-2:]  # ends within the first two tokens' text
    assert engine.generate(params(length=30, temperature=0, stop=(stop,))).tokens <= 2
    late = engine.generate(params(length=30, temperature=0, stop=(stop,), min_tokens=10))
    # Only an occurrence that ends past the first ten tokens' text counts now.
    floor = len(engine.generate(params(length=10, temperature=0)).text)
    later = full.text.find(stop, floor - len(stop) + 1)
    assert late.text == (full.text if later < 0 else full.text[:later])


def test_a_stream_adds_up_to_the_same_completion(engine: Engine) -> None:
    whole = engine.generate(params(length=30, seed=5))
    *pieces, done = engine.stream(params(length=30, seed=5))
    assert isinstance(done, Completion) and all(isinstance(p, str) for p in pieces)
    assert len(pieces) > 1 and "".join(map(str, pieces)) == whole.text == done.text
    stop = whole.text[5:7]
    *pieces, done = engine.stream(params(length=30, seed=5, stop=(stop,)))
    assert isinstance(done, Completion)
    assert "".join(map(str, pieces)) == done.text == whole.text[:whole.text.find(stop)]
    with pytest.raises(ParamError, match="window"):  # before any text is sent
        next(engine.stream(params(length=engine.window)))


def test_the_context_is_cut_from_the_front_to_fit(engine: Engine) -> None:
    long = engine.generate(params(context="word " * 500, length=56, seed=1))
    assert long.context_tokens == engine.window - 56 and long.tokens == 56
    assert engine.generate(params(context="word " * 500, max_tokens=10)).context_tokens == 10
    assert engine.generate(params(context="")).context_tokens == 1  # <|endoftext|>


def test_a_length_past_the_window_is_a_param_error(engine: Engine) -> None:
    with pytest.raises(ParamError, match="window of 256 tokens"):
        engine.generate(params(length=engine.window))


def test_greedy_decoding_at_temperature_zero(engine: Engine) -> None:
    assert engine.generate(params(temperature=0, seed=1)).text == (
        engine.generate(params(temperature=0, seed=2)).text)


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-40])
def test_a_vanishing_temperature_is_greedy_not_an_error(engine: Engine,
                                                        temperature: float) -> None:
    # Sampling at these would divide the logits into inf and fail on NaN probabilities.
    assert engine.generate(params(temperature=temperature, length=5, seed=3)).text == (
        engine.generate(params(temperature=0, length=5, seed=3)).text)


def test_both_engines_decode_greedily_to_the_same_tokens(tiny_model_dir: Path) -> None:
    """float32 on both sides: the engines differ in code, not in the model they run."""
    model = Model("tiny", tiny_model_dir)
    from fanout.convert import ensure_converted
    from worker_api.engines.ctranslate2_engine import CTranslate2Engine

    converted, _ = ensure_converted(model, "float32")
    exact = CTranslate2Engine(model, converted, "cpu", "float32")
    reference = load("transformers", model)
    asked = params(context="It was the best of times", length=20, temperature=0)
    assert exact.generate(asked).text == reference.generate(asked).text


@pytest.mark.parametrize("name", ENGINES)
def test_min_tokens_holds_off_the_end_of_text(talks_to_the_end: Path, name: str) -> None:
    engine = load(name, Model("eos-first", talks_to_the_end))
    ended = engine.generate(params(length=20, temperature=0))
    assert (ended.text, ended.tokens, ended.finish_reason) == ("", 0, "stop")
    held = engine.generate(params(length=20, temperature=0, min_tokens=5))
    assert (held.tokens, held.finish_reason) == (5, "stop")
    sampled = engine.generate(params(length=20, min_tokens=7, seed=1))
    assert (sampled.tokens, sampled.finish_reason) == (7, "stop")


@pytest.mark.parametrize("name", ENGINES)
def test_unseeded_samples_differ_between_workers_after_seeded_ones(tiny_model_dir: Path,
                                                                   name: str) -> None:
    """Two workers, each warmed up with the same seed (as every worker is): their
    unseeded samples must still differ, or a fan-out's N suggestions would be one."""
    workers = [load(name, Model("tiny", tiny_model_dir)) for _ in range(2)]
    for worker in workers:
        worker.warm_up()
    first, second = (worker.generate(params(length=20)).text for worker in workers)
    assert first != second
