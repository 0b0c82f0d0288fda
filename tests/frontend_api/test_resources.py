"""Front resources through falcon.testing, with a small in-process fan-out behind them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import falcon
import falcon.testing
import pytest

from fanout.layout import Layout, load_layout
from fanout.protocol import GenerationParams, StreamPiece
from frontend_api.access import read_api_keys
from frontend_api.app import create_app
from frontend_api.errors import WorkerTierError
from frontend_api.samples import AutocompleteRequest, Failure, Gathered, Sample
from tests.conftest import LayoutFactory


@dataclass
class EchoFanout:
    """Answers each sample with its context reversed and its seed; or fails as told."""

    failure: Exception | None = None
    pools_status: dict[str, str] = field(default_factory=dict)
    seen: list[AutocompleteRequest] = field(default_factory=list)
    lost: set[int] = field(default_factory=set)  # sample indices that time out
    hold: threading.Event | None = None  # when set, each request waits for it
    asked: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def complete(self, request: AutocompleteRequest,
                 client_gone: Callable[[], bool]) -> Gathered:
        self.seen.append(request)
        if self.hold is not None:
            self.hold.wait(10)
        if self.failure is not None:
            raise self.failure
        params = request.sample_params()
        return Gathered(
            [Sample(text=p.context[::-1], time=0.01, round_trip=0.02, tokens=p.length,
                    finish_reason="length", seed=p.seed or 0,
                    worker={"pid": 100 + i, "slot": i, "device": "cpu"},
                    context_tokens=len(p.context), **_scores(p))
             for i, p in enumerate(params) if i not in self.lost],
            [Failure(i, 504, "no answer before the deadline") for i in sorted(self.lost)])

    def ask(self, pool_name: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A tokenizer of one token per character."""
        self.asked.append((pool_name, path, body))
        if self.failure is not None:
            raise self.failure
        if path == "/tokenize":
            tokens = [ord(c) for c in body["prompt"]]
            return {"tokens": tokens, "count": len(tokens), "max_model_len": 1024}
        return {"prompt": "".join(chr(t) for t in body["tokens"])}

    def stream(self, request: AutocompleteRequest) -> Generator[
            tuple[int, StreamPiece | Sample | Failure], None, None]:
        gathered = self.complete(request, lambda: False)
        for sample in gathered.samples:
            index = sample.worker["slot"]
            if sample.prompt_text is not None:  # echo: the prompt first, as a worker does
                yield index, StreamPiece("", None, sample.prompt_text)
            yield index, StreamPiece(sample.text[:1])
            yield index, StreamPiece(sample.text[1:])
            yield index, sample
        for failure in gathered.failed:
            yield failure.index, failure

    def health(self) -> dict[str, dict[str, Any]]:
        return {name: {"status": status, "ready_workers": int(status != "down"), "workers": 1}
                for name, status in self.pools_status.items()}


def _scores(params: GenerationParams) -> dict[str, Any]:
    """What a worker adds when asked for logprobs or echo: one token per character, each
    at -1 except that a sample's seed makes it likelier (best_of prefers high seeds)."""
    if params.logprobs is None and not params.echo:
        return {}
    prompt = params.context if params.echo else ""
    text = prompt + params.context[::-1]
    scores: dict[str, Any] = {"prompt_text": prompt if params.echo else None}
    if params.logprobs is not None:
        scores["logprobs"] = {
            "tokens": list(text), "token_logprobs": [-1.0] * len(text),
            "top_logprobs": [{c: -1.0} for c in text],
            "text_offset": list(range(len(text)))}
        scores["cumulative_logprob"] = -100.0 + (params.seed or 0)
    return scores


@pytest.fixture
def layout(write_layout: LayoutFactory) -> Layout:
    return load_layout(write_layout(pools={
        "small": {"bind": "127.0.0.1:9101", "slots": ["cpu"]},
        "medium": {"bind": "127.0.0.1:9102", "slots": ["cpu", "cpu"]}},
        front={"max_body_bytes": 2048}))


def client(layout: Layout, fanout: EchoFanout) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(layout, fanout))


def test_autocomplete_returns_one_sentence_per_sample(layout: Layout) -> None:
    fanout = EchoFanout()
    result = client(layout, fanout).simulate_post(
        "/autocomplete", json={"context": "abc", "n_samples": 4, "seed": 10,
                               "model_size": "medium"})

    assert result.status_code == 200
    body = result.json
    assert [s["value"] for s in body["sentences"]] == ["cba"] * 4
    assert [s["seed"] for s in body["sentences"]] == [10, 11, 12, 13]
    assert body["model_size"] == "medium" and body["time"] >= 0
    assert body["partial"] is False and body["failed"] == [] and body["resampled"] == 0
    assert fanout.seen[0].params.length == layout.defaults.length
    assert fanout.seen[0].params.stop_at == "word" and not fanout.seen[0].distinct


def test_distinct_and_stop_at_reach_the_fanout(layout: Layout) -> None:
    fanout = EchoFanout()
    result = client(layout, fanout).simulate_post(
        "/autocomplete", json={"context": "abc", "distinct": True, "exclude": ["x"],
                               "stop_at": "line"})
    assert result.status_code == 200, result.text
    asked = fanout.seen[0]
    assert (asked.distinct, asked.exclude, asked.params.stop_at) == (True, ("x",), "line")


def test_samples_lost_by_the_deadline_make_a_partial_answer(layout: Layout) -> None:
    result = client(layout, EchoFanout(lost={0, 2})).simulate_post(
        "/autocomplete", json={"context": "abc", "n_samples": 3, "seed": 1})
    assert result.status_code == 200
    assert [s["seed"] for s in result.json["sentences"]] == [2]
    assert result.json["partial"] is True
    assert [(f["index"], f["status"]) for f in result.json["failed"]] == [(0, 504), (2, 504)]


def test_bad_parameters_never_reach_the_fanout(layout: Layout) -> None:
    fanout = EchoFanout()
    result = client(layout, fanout).simulate_post("/autocomplete",
                                                  json={"context": "x", "top_k": -1})
    assert result.status_code == 400
    assert result.json["field"] == "top_k" and "top_k" in result.json["description"]
    assert fanout.seen == []


@pytest.mark.parametrize(("body", "content_type", "status"), [
    (b"", "application/json", 400),
    (b"\xff\xfe", "application/json", 400),
    (b'{"context": "x"}', "application/x-www-form-urlencoded", 415),
    (b'{"context": "' + b"x" * 3000 + b'"}', "application/json", 413),
])
def test_bodies_that_cannot_be_read_are_4xx(layout: Layout, body: bytes, content_type: str,
                                             status: int) -> None:
    result = client(layout, EchoFanout()).simulate_post(
        "/autocomplete", body=body, headers={"Content-Type": content_type})
    assert result.status_code == status
    assert result.json["title"]


@pytest.mark.parametrize(("failure", "status", "field"), [
    (WorkerTierError(502, "Worker tier error", "bad answer"), 502, None),
    (WorkerTierError(503, "Worker tier unavailable", "pool down", retry_after=5), 503, None),
    (WorkerTierError(504, "Worker tier timed out", "too slow"), 504, None),
    (WorkerTierError(400, "Invalid parameter", "length: too long", "length"), 400, "length"),
])
def test_worker_tier_failures_keep_their_status(layout: Layout, failure: WorkerTierError,
                                                status: int, field: str | None) -> None:
    result = client(layout, EchoFanout(failure=failure)).simulate_post(
        "/autocomplete", json={"context": "x"})
    assert result.status_code == status
    assert result.json["description"] == failure.description
    assert result.json.get("field") == field
    assert result.headers.get("retry-after") == (
        str(failure.retry_after) if failure.retry_after else None)


def test_past_the_inflight_bound_the_front_answers_503_at_once(
        write_layout: LayoutFactory) -> None:
    layout = load_layout(write_layout(front={"threads": 4, "max_inflight": 2}))
    fanout = EchoFanout(hold=threading.Event())
    app = client(layout, fanout)
    answers: list[falcon.testing.Result] = []
    held = [threading.Thread(target=lambda: answers.append(
        app.simulate_post("/autocomplete", json={"context": "x", "n_samples": 1})))
        for _ in range(2)]
    for thread in held:
        thread.start()
    while len(fanout.seen) < 2:
        time.sleep(0.01)

    refused = app.simulate_post("/autocomplete", json={"context": "x", "n_samples": 1})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "front.max_inflight" in refused.json["description"]
    assert app.simulate_get("/health").json["load"]["inflight"] == 2
    fanout.hold.set()  # type: ignore[union-attr]
    for thread in held:
        thread.join(10)
    assert [a.status_code for a in answers] == [200, 200]
    load = app.simulate_get("/health").json["load"]
    assert (load["inflight"], load["rejected"]) == (0, 1)
    assert app.simulate_post("/autocomplete", json={"context": "x"}).status_code == 200


def test_past_the_queued_samples_bound_the_front_answers_503(
        write_layout: LayoutFactory) -> None:
    # One worker, room for 2 waiting samples: 3 + 1 would leave 3 waiting.
    layout = load_layout(write_layout(front={"max_queued_samples": 2}))
    fanout = EchoFanout(hold=threading.Event())
    app = client(layout, fanout)
    first = threading.Thread(target=lambda: app.simulate_post(
        "/autocomplete", json={"context": "x", "n_samples": 3}))
    first.start()
    while not fanout.seen:
        time.sleep(0.01)
    refused = app.simulate_post("/autocomplete", json={"context": "x", "n_samples": 1})
    assert refused.status_code == 503 and "front.max_queued_samples" in refused.json[
        "description"]
    fanout.hold.set()  # type: ignore[union-attr]
    first.join(10)
    # Alone on its pool, a request goes through whatever its size.
    assert app.simulate_post("/autocomplete",
                             json={"context": "x", "n_samples": 8}).status_code == 200


def test_an_unexpected_error_is_a_json_500_and_the_app_keeps_serving(layout: Layout) -> None:
    fanout = EchoFanout(failure=RuntimeError("boom"))
    app = client(layout, fanout)
    result = app.simulate_post("/autocomplete", json={"context": "x"})
    assert result.status_code == 500 and "unexpected" in result.json["description"]
    fanout.failure = None
    assert app.simulate_post("/autocomplete", json={"context": "x"}).status_code == 200


def test_models_lists_the_pools_in_layout_order(layout: Layout) -> None:
    body = client(layout, EchoFanout()).simulate_get("/models").json
    assert body["default"] == "small"
    assert [(m["name"], m["workers"], m["devices"]) for m in body["models"]] == [
        ("small", 1, ["cpu"]), ("medium", 2, ["cpu", "cpu"])]
    assert body["models"][0]["model"] == Path(layout.default_pool.model.source).name
    assert (body["models"][0]["engine"], body["models"][0]["dtype"]) == ("transformers",
                                                                         "float32")


@pytest.mark.parametrize(("statuses", "code", "overall"), [
    ({"small": "ok", "medium": "ok"}, 200, "ok"),
    ({"small": "ok", "medium": "degraded"}, 200, "degraded"),
    ({"small": "ok", "medium": "down"}, 503, "down"),
])
def test_health_summarises_the_pools(layout: Layout, statuses: dict[str, str], code: int,
                                     overall: str) -> None:
    result = client(layout, EchoFanout(pools_status=statuses)).simulate_get("/health")
    assert result.status_code == code
    assert result.json["status"] == overall
    assert {name: p["status"] for name, p in result.json["pools"].items()} == statuses


def test_the_editor_page_and_its_assets_are_served(layout: Layout) -> None:
    app = client(layout, EchoFanout())
    page = app.simulate_get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'role="listbox"' in page.text and "/static/editor.js" in page.text
    script = app.simulate_get("/static/editor.js")
    assert script.status_code == 200 and "AbortController" in script.text
    assert app.simulate_get("/static/editor.css").status_code == 200
    assert app.simulate_get("/static/../app.py").status_code == 404


def test_with_several_keys_one_key_past_its_share_gets_429_and_the_others_go_on(
        write_layout: LayoutFactory) -> None:
    # One worker and room for 3 queued samples, shared by 2 keys: 2 samples each.
    layout = load_layout(write_layout(front={"max_queued_samples": 3}))
    fanout = EchoFanout(hold=threading.Event())
    app = falcon.testing.TestClient(create_app(layout, fanout, read_api_keys("key-a,key-b",
                                                                             None)))

    def post(key: str, n: int) -> falcon.testing.Result:
        return app.simulate_post("/autocomplete", json={"context": "x", "n_samples": n},
                                 headers={"Authorization": f"Bearer {key}"})

    answers: list[falcon.testing.Result] = []
    first = threading.Thread(target=lambda: answers.append(post("key-a", 2)))
    first.start()
    while not fanout.seen:  # key A now holds 2 samples, its whole share
        time.sleep(0.01)

    refused = post("key-a", 1)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert "share of 2" in refused.json["description"]
    other = threading.Thread(target=lambda: answers.append(post("key-b", 2)))
    other.start()
    while len(fanout.seen) < 2:  # key B is served beside it
        time.sleep(0.01)
    fanout.hold.set()  # type: ignore[union-attr]
    for thread in (first, other):
        thread.join(10)
    assert [a.status_code for a in answers] == [200, 200]
    assert post("key-a", 2).status_code == 200  # its share is free again
    load = app.simulate_get("/health").json["load"]
    assert (load["inflight"], load["rejected"]) == (0, 1)
