"""The OpenAPI document: valid OpenAPI 3.1, its limits the layout's, its rules the parser's."""

from __future__ import annotations

import math
from typing import Any

import falcon.testing
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from fanout.layout import Layout, load_layout
from fanout.params import (
    MAX_CONTEXT_TOKENS,
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOP_K,
    ParamError,
)
from frontend_api.app import create_app
from frontend_api.events import parse_event
from frontend_api.openapi import build_document
from frontend_api.resources import parse_autocomplete
from tests.conftest import LayoutFactory
from tests.frontend_api.test_resources import EchoFanout


@pytest.fixture
def layout(write_layout: LayoutFactory) -> Layout:
    # Every figure differs from the built-in defaults, so a hard-coded one shows up.
    return load_layout(write_layout(
        pools={"alpha": {"bind": "127.0.0.1:9201", "slots": ["cpu"], "aliases": ["gpt2/a"]},
               "beta": {"bind": "127.0.0.1:9202", "slots": ["cpu", "cpu"]}},
        front={"max_samples": 5},
        generation={"defaults": {"n_samples": 2, "length": 11, "temperature": 0.7,
                                 "top_k": 7, "top_p": 0.5, "max_time": 1.5},
                    "limits": {"length": 77, "max_time": 7.5, "context_bytes": 100}}))


def request_schema(document: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"]["AutocompleteRequest"]
    return schema


def test_the_document_is_valid_openapi(layout: Layout) -> None:
    document = build_document(layout)
    validate(document)  # raises on the first problem
    assert document["openapi"].startswith("3.1")
    assert set(document["paths"]) == {"/autocomplete", "/autocomplete/{model}", "/events",
                                      "/models", "/health", "/openapi.json", "/metrics", "/"}
    responses = document["paths"]["/autocomplete"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "404", "413", "415", "429", "502", "503", "504"}
    assert responses["503"]["headers"]["Retry-After"]["required"] is True
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    # Open routes say so; API routes take a key or, with none configured, nothing.
    assert document["paths"]["/health"]["get"]["security"] == []
    assert {} in document["paths"]["/autocomplete"]["post"]["security"]


def test_the_limits_and_defaults_are_the_layouts(layout: Layout) -> None:
    fields = request_schema(build_document(layout))["properties"]
    assert fields["model_size"]["enum"] == ["alpha", "beta", "gpt2/a", None]
    assert fields["model_size"]["default"] == "alpha"
    assert (fields["n_samples"]["maximum"], fields["n_samples"]["default"]) == (5, 2)
    assert (fields["length"]["maximum"], fields["length"]["default"]) == (77, 11)
    assert (fields["max_time"]["maximum"], fields["max_time"]["default"]) == (7.5, 1.5)
    assert fields["max_time"]["exclusiveMinimum"] == 0
    assert fields["context"]["maxLength"] == 100
    assert "100 bytes" in fields["context"]["description"]
    assert (fields["temperature"]["maximum"], fields["temperature"]["default"]) == (
        MAX_TEMPERATURE, 0.7)
    assert (fields["top_k"]["maximum"], fields["top_k"]["default"]) == (MAX_TOP_K, 7)
    assert fields["top_p"]["default"] == 0.5
    assert fields["max_tokens"]["maximum"] == MAX_CONTEXT_TOKENS
    assert fields["seed"]["maximum"] == MAX_SEED
    assert "default" not in fields["seed"]


def _bodies() -> list[Any]:
    """Bodies on both sides of every bound of the test layout, and of the wrong shape."""
    base = {"context": "x"}
    bounds = {"n_samples": (1, 5), "length": (1, 77), "top_k": (0, MAX_TOP_K),
              "max_tokens": (1, MAX_CONTEXT_TOKENS), "seed": (0, MAX_SEED)}
    bodies: list[Any] = [base, {}, [], "x", None, {**base, "colour": "red"},
                         {"context": "x" * 100}, {"context": "x" * 101}, {"context": 3},
                         {"context": None}, {**base, "model_size": "beta"},
                         {**base, "model_size": "gamma"}, {**base, "model_size": 3},
                         {**base, "model_size": "gpt2/a"}]
    for name, (low, high) in bounds.items():
        bodies += [{**base, name: value} for value in
                   (low, high, low - 1, high + 1, float(low), float(high), 2.5, True, "3", None,
                    [1], 10**100)]
    reals = {"temperature": (0.0, MAX_TEMPERATURE), "top_p": (0.0, 1.0), "max_time": (0.0, 7.5)}
    for name, (bottom, top) in reals.items():
        bodies += [{**base, name: value} for value in
                   (bottom, top, math.nextafter(bottom, -1), math.nextafter(bottom, 1),
                    math.nextafter(top, math.inf), 1, -(10**400), 10**400, False, "1", None)]
    return bodies


def _accepted(layout: Layout, body: Any) -> bool:
    try:
        parse_autocomplete(body, layout.defaults, layout.limits, layout.names,
                           layout.front.max_samples)
    except ParamError:
        return False
    return True


def test_the_schema_accepts_what_the_parser_accepts(layout: Layout) -> None:
    """Bound by bound, the published schema and ``fanout.params`` agree."""
    document = build_document(layout)
    validator = Draft202012Validator(
        {"$ref": "#/components/schemas/AutocompleteRequest", **document})
    disagree = [(body, validator.is_valid(body)) for body in _bodies()
                if validator.is_valid(body) != _accepted(layout, body)]
    assert disagree == []


def _event_bodies() -> list[Any]:
    bodies: list[Any] = [{}, [], None, {"event": "seen"}, {"event": "dismissed", "x": 1}]
    for extra in ({}, {"model_size": "beta"}, {"model_size": "gpt2/a"},
                  {"model_size": "gamma"}, {"model_size": None}):
        bodies += [{"event": "shown", "n": n, **extra} for n in (0, 1, 5, 6, None, 2.5, "2")]
        bodies += [{"event": "accepted", "rank": r, **extra} for r in (-1, 0, 4, 5, None)]
        bodies += [{"event": "dismissed", **extra}, {"event": "dismissed", "n": 1, **extra},
                   {"event": "shown", "n": 1, "rank": 0, **extra},
                   {"event": "accepted", "rank": 0, "n": None, **extra}]
    return bodies


def test_the_event_schema_accepts_what_the_events_parser_accepts(layout: Layout) -> None:
    validator = Draft202012Validator({"$ref": "#/components/schemas/Event",
                                      **build_document(layout)})

    def accepted(body: Any) -> bool:
        try:
            parse_event(body, layout.names, layout.front.max_samples)
        except ParamError:
            return False
        return True

    disagree = [(body, validator.is_valid(body)) for body in _event_bodies()
                if validator.is_valid(body) != accepted(body)]
    assert disagree == []


def test_context_bytes_are_what_the_parser_counts(layout: Layout) -> None:
    # The one looseness JSON Schema forces: it counts characters; 60 'é' are 120 bytes.
    fields = request_schema(build_document(layout))["properties"]
    assert fields["context"]["maxLength"] >= 60
    with pytest.raises(ParamError) as caught:
        parse_autocomplete({"context": "é" * 60}, layout.defaults, layout.limits,
                           layout.pools, layout.front.max_samples)
    assert (caught.value.field, caught.value.status) == ("context", 413)


def test_the_front_serves_the_document(layout: Layout) -> None:
    app = falcon.testing.TestClient(create_app(layout, EchoFanout()))
    result = app.simulate_get("/openapi.json")
    assert result.status_code == 200
    assert result.headers["content-type"] == "application/json"
    assert result.json == build_document(layout)
