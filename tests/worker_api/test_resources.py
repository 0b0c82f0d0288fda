"""Worker resources through falcon.testing, with the real tiny model behind them."""

from __future__ import annotations

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
