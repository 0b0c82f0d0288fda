"""Pool aliases through the front: model_size, OpenAI's model, /tokenize and the path
``POST /autocomplete/<alias>`` Write With Transformer's clients post to."""

from __future__ import annotations

import falcon.testing
import pytest

from fanout.layout import Layout, load_layout
from frontend_api.app import create_app
from tests.conftest import LayoutFactory
from tests.frontend_api.test_resources import EchoFanout


@pytest.fixture
def layout(write_layout: LayoutFactory) -> Layout:
    return load_layout(write_layout(pools={
        "small": {"bind": "127.0.0.1:9101", "slots": ["cpu"], "aliases": ["gpt2"]},
        "medium": {"bind": "127.0.0.1:9102", "slots": ["cpu"],
                   "aliases": ["gpt2/medium", "gpt2-medium"]}}))


def post(layout: Layout, fanout: EchoFanout, path: str,
         body: dict[str, object]) -> falcon.testing.Result:
    return falcon.testing.TestClient(create_app(layout, fanout)).simulate_post(path, json=body)


def test_an_alias_as_model_size_is_its_pool(layout: Layout) -> None:
    fanout = EchoFanout()
    answer = post(layout, fanout, "/autocomplete", {"context": "ab", "model_size": "gpt2/medium"})
    assert answer.status_code == 200, answer.text
    assert answer.json["model_size"] == "medium" and fanout.seen[0].model_size == "medium"


@pytest.mark.parametrize(("path", "body", "pool"), [
    ("/autocomplete/gpt2/medium", {}, "medium"),  # WwT's path, with '/' in the alias
    ("/autocomplete/gpt2/medium", {"model_size": "gpt2/medium"}, "medium"),  # as WwT sends
    ("/autocomplete/gpt2/medium", {"model_size": "medium"}, "medium"),  # another name of it
    ("/autocomplete/gpt2", {}, "small"),
    ("/autocomplete/medium", {"model_size": None}, "medium"),  # a pool's own name too
])
def test_the_path_chooses_the_pool(layout: Layout, path: str, body: dict[str, object],
                                   pool: str) -> None:
    fanout = EchoFanout()
    answer = post(layout, fanout, path, {"context": "ab", "n_samples": 2, **body})
    assert answer.status_code == 200, answer.text
    assert answer.json["model_size"] == pool and [s.model_size for s in fanout.seen] == [pool]
    assert [s["value"] for s in answer.json["sentences"]] == ["ba", "ba"]


def test_a_model_size_that_contradicts_the_path_is_a_400(layout: Layout) -> None:
    fanout = EchoFanout()
    answer = post(layout, fanout, "/autocomplete/gpt2/medium",
                  {"context": "ab", "model_size": "gpt2"})
    assert answer.status_code == 400 and answer.json["field"] == "model_size"
    assert "'gpt2' is not the model the path names (medium)" in answer.json["description"]
    assert fanout.seen == []


@pytest.mark.parametrize("path", ["/autocomplete/gpt2/large", "/autocomplete/gpt2/medium/x",
                                  "/autocomplete/Medium"])
def test_a_path_naming_no_pool_is_a_404(layout: Layout, path: str) -> None:
    fanout = EchoFanout()
    answer = post(layout, fanout, path, {"context": "ab"})
    assert answer.status_code == 404 and "gpt2/medium" in answer.json["description"]
    assert fanout.seen == []


def test_models_and_v1_models_list_the_aliases(layout: Layout) -> None:
    app = falcon.testing.TestClient(create_app(layout, EchoFanout()))
    models = app.simulate_get("/models").json["models"]
    assert [(m["name"], m["aliases"]) for m in models] == [
        ("small", ["gpt2"]), ("medium", ["gpt2/medium", "gpt2-medium"])]
    listed = app.simulate_get("/v1/models").json["data"]
    assert [(m["id"], m["aliases"]) for m in listed] == [
        ("small", ["gpt2"]), ("medium", ["gpt2/medium", "gpt2-medium"])]
    assert app.simulate_get("/v1/models/gpt2/medium").json["id"] == "medium"
    assert app.simulate_get("/v1/models/gpt2/large").status_code == 404


def test_openai_model_and_tokenize_take_an_alias(layout: Layout) -> None:
    fanout = EchoFanout()
    app = falcon.testing.TestClient(create_app(layout, fanout))
    answer = app.simulate_post("/v1/completions", json={"model": "gpt2-medium", "prompt": "ab",
                                                        "max_tokens": 2})
    assert answer.status_code == 200, answer.text
    assert answer.json["model"] == "medium" and fanout.seen[0].model_size == "medium"
    tokens = app.simulate_post("/tokenize", json={"model": "gpt2/medium", "prompt": "ab"})
    assert tokens.status_code == 200 and fanout.asked[0][0] == "medium"
