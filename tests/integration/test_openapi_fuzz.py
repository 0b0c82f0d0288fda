"""Fuzz the live front from its own ``/openapi.json`` with schemathesis.

Every operation gets generated requests, valid and (where it takes input) invalid, a
bounded, derandomised number of them, and every answer must be in the document: a status
it lists, its content type, a body its schema accepts, the headers it promises. Invalid
requests must get a 4xx. Two exceptions, both stated in the document:

- 5xx: the ``tiers`` layout names pool ``ghost`` (alias ``gpt2/ghost``) but never starts
  it, so a request for it, by ``model_size`` or by the path, is 503 (a pool that is down)
  and ``/health`` is 503 while it is. Nothing else may be a 5xx: a refused connection is
  503, never 502.
- a valid request may still meet a limit JSON Schema cannot state: the model's window
  (the front cannot know it: 400 naming ``length``, from the worker tier), one field
  bounded by another (``min_tokens`` at most ``length``: 400 naming ``min_tokens``) and
  sizes in UTF-8 bytes rather than characters (413), and under ``/autocomplete/{model}``
  a ``model_size`` naming another pool than the path (400 naming ``model_size``).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from fanout.layout import Layout
from tests.integration.servers import RunningTiers

pytestmark = pytest.mark.integration

GHOST = ("ghost", "gpt2/ghost")  # configured, never started (tests/integration/conftest.py)
# schemathesis' own list of statuses that reject invalid data, plus 413: a context past
# limits.context_bytes (its maxLength) or a body past front.max_body_bytes is too large.
REJECTED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428",
            "429", "5xx"]
CONFIG = schemathesis.Config.from_dict({"checks": {
    "negative_data_rejection": {"expected-statuses": REJECTED},
    # Replaced by the narrower checks below.
    "not_a_server_error": {"enabled": False},
    "positive_data_acceptance": {"enabled": False},
}})
# Examples per operation and mode. Operations without inputs have no negative form, and
# a handful of cases exhausts them.
RUNS = [("POST", "/autocomplete", GenerationMode.POSITIVE, 40),
        ("POST", "/autocomplete", GenerationMode.NEGATIVE, 40),
        ("POST", "/autocomplete/{model}", GenerationMode.POSITIVE, 20),
        ("POST", "/autocomplete/{model}", GenerationMode.NEGATIVE, 20),
        ("POST", "/events", GenerationMode.POSITIVE, 20),
        ("POST", "/events", GenerationMode.NEGATIVE, 20),
        ("GET", "/models", GenerationMode.POSITIVE, 5),
        ("GET", "/health", GenerationMode.POSITIVE, 5),
        ("GET", "/openapi.json", GenerationMode.POSITIVE, 5),
        ("GET", "/metrics", GenerationMode.POSITIVE, 5),
        ("GET", "/", GenerationMode.POSITIVE, 5)]


@pytest.fixture(scope="module")
def front_schema(tiers: RunningTiers) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{tiers.front_url}/openapi.json", config=CONFIG)


def path_model(case: schemathesis.Case) -> str | None:
    """``/autocomplete/{model}``'s pool as the server reads it (schemathesis keeps the
    parameter percent-encoded: gpt2%2Fghost)."""
    model = (case.path_parameters or {}).get("model")
    return unquote(model) if isinstance(model, str) else None


def no_server_error_but_the_ghost_pool(ctx: schemathesis.CheckContext,
                                       response: schemathesis.Response,
                                       case: schemathesis.Case) -> bool | None:
    """5xx is a failure unless the document's own reason for a 503 holds: pool ghost down."""
    status = response.status_code
    if status >= 500:
        named: list[object] = [path_model(case)]
        if isinstance(case.body, dict) and case.operation.path != "/events":
            named.append(case.body.get("model_size"))
        ghost = any(name in GHOST for name in named)
        assert status == 503 and (ghost or case.path == "/health"), (
            f"{case.method} {case.path} answered {status}: {response.text[:300]}")
    return None


def valid_requests_are_served(layout: Layout) -> schemathesis.CheckFunction:
    """schemathesis' positive_data_acceptance, but knowing the limits no schema can state."""

    def check(ctx: schemathesis.CheckContext, response: schemathesis.Response,
              case: schemathesis.Case) -> bool | None:
        status = response.status_code
        if not 400 <= status < 500:
            return None
        error = json.loads(response.content)
        sent = response.request.body or b""
        context = case.body.get("context") if isinstance(case.body, dict) else None
        context_bytes = len(context.encode("utf-8")) if isinstance(context, str) else 0
        past_window = (status == 400 and error.get("field") == "length"
                       and "window" in error["description"])
        # A cross-field bound: the document states it in words, JSON Schema cannot.
        body: dict[str, Any] = case.body if isinstance(case.body, dict) else {}
        length = body.get("length") or layout.defaults.length  # null: the default
        past_length = (status == 400 and error.get("field") == "min_tokens"
                       and (body.get("min_tokens") or 0) > length)
        # The path chose the pool; the body's model_size named another one.
        path_pool = path_model(case)
        body_pool = body.get("model_size")
        other_pool = (status == 400 and error.get("field") == "model_size"
                      and path_pool is not None and body_pool is not None
                      and layout.pool_named(body_pool) != layout.pool_named(path_pool))
        too_large = status == 413 and (
            len(sent) > layout.front.max_body_bytes
            or context_bytes > layout.limits.context_bytes)
        assert past_window or past_length or other_pool or too_large, (
            f"a valid request got {status}: {error}")
        return None

    return check


def test_every_documented_operation_is_fuzzed(front_schema: schemathesis.BaseSchema) -> None:
    documented = {(method.upper(), path)
                  for path, item in front_schema.raw_schema["paths"].items() for method in item}
    assert documented == {(method, path) for method, path, _, _ in RUNS}


# schemathesis' own pytest integration (schema.parametrize, pytest.from_fixture) fails
# under pytest 9.2: it sets Function._nodeid, which pytest no longer has. Its Hypothesis
# strategies are its documented way into a plain test.
@pytest.mark.parametrize(("method", "path", "mode", "examples"), RUNS,
                         ids=[f"{m} {p} {g.value}" for m, p, g, _ in RUNS])
def test_the_front_answers_as_its_document_says(
        tiers: RunningTiers, front_schema: schemathesis.BaseSchema, method: str, path: str,
        mode: GenerationMode, examples: int) -> None:
    operation = front_schema[path][method]
    extra: list[schemathesis.CheckFunction] = [no_server_error_but_the_ghost_pool]
    if mode is GenerationMode.POSITIVE:
        extra.append(valid_requests_are_served(tiers.layout))

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(case=operation.as_strategy(generation_mode=mode))
    def answers_as_documented(case: schemathesis.Case) -> None:
        # Every other check schemathesis has: status code, content type, headers and body
        # as documented, invalid data refused with a 4xx, ...
        case.call_and_validate(timeout=30, additional_checks=extra)

    answers_as_documented()
