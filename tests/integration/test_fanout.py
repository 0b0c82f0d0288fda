"""The whole path over real HTTP: front -> N parallel requests -> sync workers -> GPT-2."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest
import requests

from fanout.protocol import EXTRA_TOKENS
from tests.integration.servers import READY_SECONDS, RunningTiers, paused

pytestmark = pytest.mark.integration


def autocomplete(tiers: RunningTiers, body: Any, **kwargs: Any) -> requests.Response:
    return requests.post(f"{tiers.front_url}/autocomplete", json=body, timeout=30, **kwargs)


def test_three_samples_are_served_by_three_distinct_workers(tiers: RunningTiers) -> None:
    response = autocomplete(tiers, {"context": "The nation", "n_samples": 3, "length": 40})

    assert response.status_code == 200, response.text
    body = response.json()
    sentences = body["sentences"]
    assert len(sentences) == 3
    # Which worker takes which sample is the scheduler's: test_spread.py shows, at a pace
    # the test sets, that three samples in flight hold three workers.
    ready = tiers.ready_slots("small")
    assert all(ready[str(s["worker"]["slot"])] == s["worker"]["pid"] for s in sentences)
    # Each ends on a whole word (stop_at's default): a few tokens more or fewer than 40.
    assert all(s["value"] and 0 < s["tokens"] <= 40 + EXTRA_TOKENS for s in sentences)
    assert all(s["finish_reason"] == "length" for s in sentences)


def test_a_seed_makes_completions_reproducible_and_distinct(tiers: RunningTiers) -> None:
    request = {"context": "Once upon a time", "n_samples": 3, "length": 12, "seed": 1234}

    first = [s["value"] for s in autocomplete(tiers, request).json()["sentences"]]
    second = [s["value"] for s in autocomplete(tiers, request).json()["sentences"]]

    assert first == second
    assert len(set(first)) == 3  # seeds 1234, 1235, 1236
    other = autocomplete(tiers, {**request, "seed": 99}).json()["sentences"]
    assert [s["value"] for s in other] != first


def test_suggestions_end_on_whole_words_and_stop_at_none_keeps_the_budget(
        tiers: RunningTiers) -> None:
    for seed in (1, 2, 3):
        request = {"context": "The nation", "n_samples": 3, "length": 7, "seed": seed}
        clean = autocomplete(tiers, request).json()["sentences"]
        raw = autocomplete(tiers, {**request, "length": 7 + EXTRA_TOKENS + 10,
                                   "stop_at": "none"}).json()["sentences"]
        for kept, longer in zip(clean, raw, strict=True):
            text, after = kept["value"], longer["value"]
            assert after.startswith(text)  # the same seed: the same tokens
            following = after[len(text):len(text) + 1]
            assert not (text and text[-1].isalnum() and following.isalnum()), (text, after)
    exact = autocomplete(tiers, {"context": "The nation", "length": 7, "stop_at": "none"})
    assert [s["tokens"] for s in exact.json()["sentences"]] == [7, 7, 7]


def test_distinct_gives_different_texts(tiers: RunningTiers) -> None:
    request = {"context": "The nation", "n_samples": 3, "length": 4, "temperature": 0.2,
               "seed": 7, "distinct": True}
    body = autocomplete(tiers, request).json()
    texts = [" ".join(s["value"].split()) for s in body["sentences"]]
    assert len(texts) == 3 and len(set(texts)) == 3 and all(texts), body
    assert body["resampled"] >= 0 and not body["partial"]
    # The same texts excluded: three more, none of them.
    again = autocomplete(tiers, {**request, "exclude": texts}).json()
    assert not set(texts) & {" ".join(s["value"].split()) for s in again["sentences"]}, again
    assert again["resampled"] >= 1


def test_models_and_health_describe_the_layout(tiers: RunningTiers) -> None:
    models = requests.get(f"{tiers.front_url}/models", timeout=5).json()
    assert models["default"] == "small"
    assert [(m["name"], m["workers"]) for m in models["models"]] == [("small", 3), ("ghost", 1)]

    health = requests.get(f"{tiers.front_url}/health", timeout=5)
    assert health.status_code == 503  # pool ghost was never started
    pools = health.json()["pools"]
    assert pools["small"]["status"] == "ok" and pools["small"]["ready_workers"] == 3
    assert pools["ghost"]["status"] == "down"


def test_worker_info_reports_model_and_device(tiers: RunningTiers) -> None:
    info = requests.get(f"{tiers.pool_url('small')}/info", timeout=5).json()
    assert info["model_type"] == "gpt2" and info["dtype"] == "float32"
    assert info["parameters"] > 1_000_000
    assert info["worker"]["device"] == "cpu" and info["torch_threads"] == 1
    assert info["memory"]["rss_bytes"] > 0


@pytest.mark.parametrize(("body", "headers", "status", "field"), [
    (b"{not json", {"Content-Type": "application/json"}, 400, None),
    (b"", {"Content-Type": "application/json"}, 400, None),
    (b'{"context": "x"}', {"Content-Type": "text/plain"}, 415, None),
    (b'{"context": "x", "model_size": "huge"}', {}, 404, "model_size"),
    (b'{"context": "x", "n_samples": 99}', {}, 400, "n_samples"),
    (b'{"context": "x", "temperature": NaN}', {}, 400, "temperature"),
    (b'{"context": "x", "length": 301}', {}, 400, "length"),  # over the layout's limit
    (b'{"context": "x", "length": 256}', {}, 400, "length"),  # the worker: window is 256
    (b'{"context": "x", "top_k": "40"}', {}, 400, "top_k"),
    (b'{"context": "x", "colour": "red"}', {}, 400, "colour"),
    (b'[1, 2]', {}, 400, "body"),
    (b'{"context": "\xff"}', {}, 400, None),  # not UTF-8
    (b'{"context": ' + b"[" * 1900 + b"]" * 1900 + b"}", {}, 400, None),  # deep nesting
    (b'{"context": "' + b"a" * 3000 + b'"}', {}, 413, "context"),
    (b'{"context": "' + b"a" * 5000 + b'"}', {}, 413, None),  # over the body limit
])
def test_bad_requests_get_a_json_error_naming_the_problem(
        tiers: RunningTiers, body: bytes, headers: dict[str, str], status: int,
        field: str | None) -> None:
    response = requests.post(f"{tiers.front_url}/autocomplete", data=body, timeout=10,
                             headers={"Content-Type": "application/json", **headers})

    assert response.status_code == status, response.text
    error = response.json()
    assert error["title"] and error["description"]
    assert error.get("field") == field


def test_a_long_context_is_cut_from_the_front_to_fit_the_window(tiers: RunningTiers) -> None:
    context = "word " * 400  # 400 tokens; the window is 256
    response = autocomplete(tiers, {"context": context, "length": 50, "max_time": 10,
                                    "stop_at": "none"})
    assert response.status_code == 200, response.text
    assert all(s["tokens"] == 50 for s in response.json()["sentences"])


def test_the_window_error_comes_from_the_worker_with_its_words(tiers: RunningTiers) -> None:
    response = autocomplete(tiers, {"context": "x", "length": 256})
    assert response.status_code == 400
    assert "window of 256 tokens" in response.json()["description"]


def test_a_pool_that_is_down_answers_503_at_once(tiers: RunningTiers) -> None:
    started = time.monotonic()
    response = autocomplete(tiers, {"context": "x", "model_size": "ghost"})

    assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
    assert "'ghost' is down" in response.json()["description"]
    assert time.monotonic() - started < 1.0


def test_a_killed_worker_is_respawned_into_its_own_slot(tiers: RunningTiers) -> None:
    before = tiers.ready_slots("small")
    victim = before["1"]

    os.kill(victim, signal.SIGKILL)

    deadline = time.monotonic() + READY_SECONDS
    while (now := tiers.ready_slots("small")).get("1") in (None, victim):
        assert time.monotonic() < deadline, tiers.log_tail()
        time.sleep(0.2)
    assert now["0"] == before["0"] and now["2"] == before["2"]
    assert len(now) == 3
    with paused([before["0"], before["2"]]):  # only the new worker can take it
        [sentence] = autocomplete(tiers, {"context": "back", "n_samples": 1, "length": 4}
                                  ).json()["sentences"]
    assert (sentence["worker"]["slot"], sentence["worker"]["pid"]) == (1, now["1"])
