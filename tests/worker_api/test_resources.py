"""Worker resources through falcon.testing, with the real tiny model behind them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import falcon.testing
import pytest

from fanout.layout import Layout, Model, load_layout
from tests.conftest import LayoutFactory
from tests.worker_api.conftest import ENGINES, load
from worker_api.app import create_app
from worker_api.engines.base import Engine
from worker_api.resources import WorkerIdentity
from worker_api.slots import SlotBoard


@pytest.fixture
def layout(write_layout: LayoutFactory) -> Layout:
    return load_layout(write_layout(pools={"small": {"bind": "127.0.0.1:9101",
                                                     "slots": ["cpu", "cpu"]}}))


@pytest.fixture(scope="module", params=ENGINES)
def cold_model(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Engine:
    """The tiny model loaded by each engine in turn, not yet warmed up."""
    return load(request.param, Model(str(tiny_model_dir), tiny_model_dir))


def app_for(layout: Layout, model: Engine, tmp_path: Path) -> falcon.testing.TestClient:
    pool = layout.default_pool
    board = SlotBoard(tmp_path)
    if model.ready:
        board.mark_ready(1, os.getpid(), "cpu")
    return falcon.testing.TestClient(
        create_app(model, layout, WorkerIdentity(pool, pool.slots[1]), board))


def test_health_is_503_until_the_model_is_warm(layout: Layout, cold_model: Engine,
                                               tmp_path: Path) -> None:
    cold = app_for(layout, cold_model, tmp_path).simulate_get("/health")
    assert cold.status_code == 503 and cold.json["status"] == "loading"

    cold_model.warm_up()
    warm = app_for(layout, cold_model, tmp_path).simulate_get("/health")
    assert warm.status_code == 200
    assert warm.json["ready_slots"] == {"1": os.getpid()} and warm.json["workers"] == 2


def test_generate_answers_with_the_worker_identity(layout: Layout, cold_model: Engine,
                                                   tmp_path: Path) -> None:
    result = app_for(layout, cold_model, tmp_path).simulate_post(
        "/generate", json={"context": "Hello", "length": 6, "seed": 5, "max_time": 10})
    assert result.status_code == 200
    body = result.json
    assert body["tokens"] == 6 and body["finish_reason"] == "length" and body["seed"] == 5
    assert isinstance(body["text"], str) and body["time"] > 0
    assert body["worker"] == {"pid": os.getpid(), "slot": 1, "device": "cpu", "pool": "small"}


@pytest.mark.parametrize(("body", "status", "field"), [
    ({"context": "x", "length": 256}, 400, "length"),
    ({"context": "x", "n_samples": 2}, 400, "n_samples"),
    ({"length": 3}, 400, "context"),
    ({"context": "x", "max_time": 0}, 400, "max_time"),
])
def test_generate_rejects_bad_fields(layout: Layout, cold_model: Engine,
                                     tmp_path: Path, body: dict[str, object], status: int,
                                     field: str) -> None:
    result = app_for(layout, cold_model, tmp_path).simulate_post("/generate", json=body)
    assert result.status_code == status
    assert result.json["field"] == field


def test_info_describes_model_and_memory(layout: Layout, cold_model: Engine,
                                         tmp_path: Path) -> None:
    info = app_for(layout, cold_model, tmp_path).simulate_get("/info").json
    assert info["engine"] == cold_model.name and info["window"] == 256
    precision = {"transformers": ("dtype", "float32"), "ctranslate2": ("quantization", "int8")}
    key, value = precision[cold_model.name]
    assert info[key] == value
    # 50257 x 64 embeddings + 256 x 64 positions + 2 blocks of 49,984 + the final norm
    assert info["parameters"] == 3_332_928
    assert info["memory"]["rss_bytes"] > 0 and info["worker"]["slot"] == 1


def test_min_tokens_above_the_length_is_refused_by_name(layout: Layout, cold_model: Engine,
                                                        tmp_path: Path) -> None:
    result = app_for(layout, cold_model, tmp_path).simulate_post(
        "/generate", json={"context": "x", "length": 3, "min_tokens": 4})
    assert result.status_code == 400 and result.json["field"] == "min_tokens"
    assert "at most length (3)" in result.json["description"]


def test_generate_answers_logprobs_and_echo_in_openai_shapes(layout: Layout, cold_model: Engine,
                                                             tmp_path: Path) -> None:
    client = app_for(layout, cold_model, tmp_path)
    plain = client.simulate_post("/generate", json={"context": "Hello world", "length": 4,
                                                    "seed": 1})
    assert set(plain.json) == {"text", "tokens", "finish_reason", "time", "seed",
                               "context_tokens", "worker"}
    body = client.simulate_post("/generate", json={
        "context": "Hello world", "length": 4, "seed": 1, "logprobs": 2, "echo": True}).json
    assert body["text"] == plain.json["text"] and body["prompt_text"] == "Hello world"
    logprobs = body["logprobs"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(logprobs["tokens"]) == 2 + 4 == len(logprobs["text_offset"])
    assert logprobs["tokens"][:2] == ["Hello", " world"] and logprobs["text_offset"][:3] == [
        0, 5, 11]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert "".join(logprobs["tokens"]) == "Hello world" + body["text"]
    assert body["cumulative_logprob"] == pytest.approx(sum(logprobs["token_logprobs"][2:]))
    assert all(1 <= len(top) <= 3 for top in logprobs["top_logprobs"][1:])


def test_a_stream_carries_the_entries_with_its_text(layout: Layout, cold_model: Engine,
                                                    tmp_path: Path) -> None:
    result = app_for(layout, cold_model, tmp_path).simulate_post("/generate/stream", json={
        "context": "Hello world", "length": 8, "seed": 2, "logprobs": 1, "echo": True})
    first, *lines, done = [json.loads(line) for line in result.text.splitlines()]
    assert first == {"text": "", "prompt_text": "Hello world", "logprobs": {
        "tokens": ["Hello", " world"], "token_logprobs": [None, first["logprobs"][
            "token_logprobs"][1]], "top_logprobs": [None, first["logprobs"]["top_logprobs"][1]],
        "text_offset": [0, 5]}}
    assert done["done"] and "".join(line["text"] for line in lines) == done["text"]
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert [v for line in [first, *lines] for v in line["logprobs"][key]] == (
            done["logprobs"][key])


def test_tokenize_and_detokenize(layout: Layout, cold_model: Engine, tmp_path: Path) -> None:
    client = app_for(layout, cold_model, tmp_path)
    assert client.simulate_post("/tokenize", json={"prompt": "Hello world"}).json == {
        "tokens": [15496, 995], "count": 2, "max_model_len": 256}
    assert client.simulate_post("/detokenize", json={"tokens": [50256, 15496, 995]}).json == {
        "prompt": "<|endoftext|>Hello world"}


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/tokenize", {"prompt": 3}, "prompt"),
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "x", "model": "small"}, "model"),
    ("/tokenize", '{"prompt": "\\ud800"}', "prompt"),  # a lone surrogate, sent as JSON
    ("/detokenize", {"tokens": [50257]}, "tokens"),
    ("/detokenize", {"tokens": [True]}, "tokens"),
    ("/detokenize", {"tokens": "1"}, "tokens"),
    ("/detokenize", [1], "body"),
    ("/generate", {"context_ids": [1, 50257]}, "context_ids"),
    ("/generate", {"context": "x", "logit_bias": {"50257": 5}}, "logit_bias"),
    ("/generate/stream", {"context_ids": [50257]}, "context_ids"),
])
def test_token_ids_and_bodies_are_checked_by_field(layout: Layout, cold_model: Engine,
                                                   tmp_path: Path, path: str,
                                                   body: object, field: str) -> None:
    client = app_for(layout, cold_model, tmp_path)
    result = (client.simulate_post(path, body=body, content_type="application/json")
              if isinstance(body, str) else client.simulate_post(path, json=body))
    assert result.status_code == 400 and result.json["field"] == field
