"""CTranslate2 decodes the samples of requests a worker took together as one batch
(``worker_api.rounds``): each row keeps the contract of a sample decoded alone."""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from fanout.layout import Model
from fanout.protocol import GenerationParams
from tests.worker_api.conftest import load
from worker_api import rounds
from worker_api.engines.base import Completion, Engine

Abandoned = Callable[[], bool] | None


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    loaded = load("ctranslate2", Model("tiny", tiny_model_dir))
    loaded.warm_up()
    return loaded


def params(**changes: object) -> GenerationParams:
    base = {"context": "The nation", "length": 8, "temperature": 1.0, "top_k": 40,
            "top_p": 0.9, "max_time": 600.0, "stop_at": "none"}  # no test waits on the clock
    return GenerationParams(**{**base, **changes})  # type: ignore[arg-type]


def in_one_round(engine: Engine, *asked: tuple[GenerationParams, Abandoned]
                 ) -> list[Completion | BaseException]:
    """Each request generated on its own thread, all of them one round, as a worker
    serves the connections it took together."""
    return rounds.run_together([partial(engine.generate, request, abandoned=abandoned)
                                for request, abandoned in asked])


def completions(results: list[Completion | BaseException]) -> list[Completion]:
    assert all(isinstance(result, Completion) for result in results), results
    return results  # type: ignore[return-value]


def test_greedy_rows_decode_as_each_alone(engine: Engine) -> None:
    asked = [params(context="The nation is", temperature=0, length=12),
             params(context="The rain fell", temperature=0, length=5),
             params(context="In his address", temperature=0, length=9)]
    assert {len(engine.tokenize(request.context)) for request in asked} == {3}
    alone = [engine.generate(request) for request in asked]
    together = completions(in_one_round(engine, *[(request, None) for request in asked]))
    assert [(c.text, c.tokens) for c in together] == [(c.text, c.tokens) for c in alone]
    assert [c.batch for c in together] == [3, 3, 3] and {c.batch for c in alone} == {1}
    assert [c.tokens for c in together] == [12, 5, 9]  # each row its own length


def test_prompts_of_near_lengths_share_a_batch_and_decode_as_each_alone(
        engine: Engine) -> None:
    asked = [params(context=context, temperature=0, length=8) for context in (
        "The nation",                                       # 2 tokens
        "In his address to the Congress, the President",    # 9: within 8 of the first
        "It was a dark and stormy night, and the rain fell in torrents, except",  # 18
        "Hello")]                                           # 1: with no other
    assert [len(engine.tokenize(request.context)) for request in asked] == [2, 9, 18, 1]
    alone = [engine.generate(request) for request in asked]
    together = completions(in_one_round(engine, *[(request, None) for request in asked]))
    assert [c.text for c in together] == [c.text for c in alone]
    assert [c.batch for c in together] == [2, 2, 1, 1]


def test_min_tokens_holds_in_a_batch_of_other_prompt_lengths(talks_to_the_end: Path) -> None:
    # A row's prompt tail that CTranslate2 decodes step by step is no token of its
    # completion: min_tokens still counts from its own first token.
    eager = load("ctranslate2", Model("eos", talks_to_the_end))
    asked = [params(context="The nation", length=8, min_tokens=5, temperature=0),
             params(context="In his address to the Congress", length=8, min_tokens=5,
                    temperature=0)]
    together = completions(in_one_round(eager, *[(request, None) for request in asked]))
    assert [(c.tokens, c.finish_reason, c.batch) for c in together] == [(5, "stop", 2)] * 2


def test_each_row_stops_on_its_own_terms(engine: Engine) -> None:
    asked = []

    def abandoned() -> bool:  # the second request's front hangs up after its third token
        asked.append(1)
        return len(asked) >= 3
    stop = engine.generate(params(temperature=0, length=12)).text.split()[2]
    stopped, left, timed_out, full = completions(in_one_round(
        engine, (params(temperature=0, length=12, stop=(stop,)), None),
        (params(temperature=0, length=12), abandoned),
        (params(temperature=0, length=12, max_time=1e-9), None),
        (params(temperature=0, length=12), None)))
    assert stopped.finish_reason == "stop" and stop not in stopped.text
    assert (left.finish_reason, left.tokens) == ("abandoned", 3)
    assert timed_out.finish_reason == "time" and timed_out.tokens < 12
    assert (full.finish_reason, full.tokens) == ("length", 12)
    assert {done.batch for done in (stopped, left, timed_out, full)} == {4}


def test_an_error_in_one_row_reaches_its_request_only(engine: Engine) -> None:
    def failing() -> bool:
        raise OSError("the socket check failed")
    failed, fine = in_one_round(engine, (params(temperature=0, length=10), failing),
                                (params(temperature=0, length=10), None))
    assert isinstance(failed, OSError) and "socket check" in str(failed)
    assert isinstance(fine, Completion) and fine.tokens == 10 and fine.batch == 2


def test_only_samples_that_decode_alike_share_a_batch(engine: Engine) -> None:
    same, other, again = completions(in_one_round(
        engine, (params(top_k=40), None), (params(top_k=5), None), (params(top_k=40), None)))
    assert (same.batch, other.batch, again.batch) == (2, 1, 2)


def test_a_seeded_sample_in_a_round_decodes_alone_and_replays(engine: Engine) -> None:
    seeded = params(seed=11, length=12)
    alone = engine.generate(seeded)
    in_round, unseeded = completions(in_one_round(engine, (seeded, None), (params(), None)))
    assert (in_round.text, in_round.seed, in_round.batch) == (alone.text, 11, 1)
    assert unseeded.batch == 1 and unseeded.tokens == 8


def test_a_stream_in_a_round_does_not_hold_the_others(engine: Engine) -> None:
    """A stream leaves its round as it starts: the samples taken with it decode while it
    is still being read."""
    together = rounds.Round(2)
    results: list[Completion] = []
    streaming = threading.Event()
    release = threading.Event()

    def stream() -> None:
        with rounds.serving(together):
            pieces = engine.stream(params(temperature=0, length=6))
            next(pieces)  # under way
            streaming.set()
            release.wait(timeout=120)
            for _ in pieces:
                pass

    def sample() -> None:
        with rounds.serving(together):
            streaming.wait(timeout=120)
            results.append(engine.generate(params(temperature=0, length=6)))
            release.set()  # decoded while the stream was held open

    threads = [threading.Thread(target=stream), threading.Thread(target=sample)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert len(results) == 1 and results[0].tokens == 6 and results[0].batch == 1
