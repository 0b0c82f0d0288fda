"""Bad input against both real tiers: always a 4xx JSON error naming the problem, never a
5xx, a crash or a hang; and values at the edges of the rules are served.

The front's ``/autocomplete`` and a pool's ``/generate`` share the body reader
(``fanout.http``) and the rules (``fanout.params``), so most rows go to both. Rows the
front already has in ``test_fanout.py`` (not JSON, 415 for text/plain, NaN temperature,
length past the limit and the window, a string top_k, an array body, invalid UTF-8,
nesting inside a field, the two 413s) run here against the worker only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from fanout.params import MAX_CONTEXT_TOKENS, MAX_SEED, MAX_TOP_K, generation_body_limit
from tests.integration.servers import RunningTiers

pytestmark = pytest.mark.integration

BOTH, FRONT, WORKER = ("front", "worker"), ("front",), ("worker",)
JSON_TYPE = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Sizes:
    """The figures the rows are built from: the tiers' layout and the model's window."""

    max_samples: int
    length: int
    context_bytes: int
    max_body_bytes: int
    worker_body_bytes: int
    window: int


@pytest.fixture(scope="module")
def sizes(tiers: RunningTiers) -> Sizes:
    info = requests.get(f"{tiers.pool_url('small')}/info", timeout=10).json()
    layout = tiers.layout
    return Sizes(layout.front.max_samples, layout.limits.length, layout.limits.context_bytes,
                 layout.front.max_body_bytes,
                 generation_body_limit(layout.limits, layout.front.max_body_bytes),
                 info["window"])


def url(tiers: RunningTiers, target: str) -> str:
    return (f"{tiers.front_url}/autocomplete" if target == "front"
            else f"{tiers.pool_url('small')}/generate")


def fields(text: str) -> bytes:
    """A body with a valid context and ``text`` as the raw JSON of more fields."""
    return b'{"context": "x", ' + text.encode("utf-8") + b"}"


Body = bytes | Callable[[Sizes], bytes]


@dataclass(frozen=True)
class Bad:
    body: Body
    status: int
    field: str | None  # the `field` the error names; None for a body-level problem
    words: str  # must appear in the description
    targets: tuple[str, ...] = BOTH
    headers: dict[str, str] | None = None  # replaces the JSON content type


ROWS = {
    # Not a JSON object, or no JSON at all
    "no-content-type": Bad(b'{"context": "x"}', 415, None, "application/json", headers={}),
    "xml-content-type": Bad(b'{"context": "x"}', 415, None, "not application/xml",
                            headers={"Content-Type": "application/xml"}),
    "whitespace-body": Bad(b" \n\t ", 400, None, "send a JSON object"),
    "empty-body": Bad(b"", 400, None, "send a JSON object", WORKER),
    "null-body": Bad(b"null", 400, "body", "not null"),
    "string-body": Bad(b'"The nation"', 400, "body", "not a string"),
    "number-body": Bad(b"3.5", 400, "body", "not a number"),
    "nan-body": Bad(b"NaN", 400, "body", "not NaN"),
    "not-json": Bad(b"{'context': 'x'}", 400, None, "not valid JSON", WORKER),
    "trailing-garbage": Bad(b'{"context": "x"} {}', 400, None, "not valid JSON"),
    "missing-context": Bad(b"{}", 400, "context", "is required"),
    "null-context": Bad(b'{"context": null}', 400, "context", "is required"),
    # NaN and Infinity: Python's json reads them, JSON has no such thing
    "nan-context": Bad(fields('"context": NaN'), 400, "context", "not NaN"),
    "nan-length": Bad(fields('"length": NaN'), 400, "length", "not NaN"),
    "infinity-length": Bad(fields('"length": Infinity'), 400, "length", "not Infinity"),
    "infinity-temperature": Bad(fields('"temperature": Infinity'), 400, "temperature",
                                "finite number, not Infinity"),
    "minus-infinity-max-time": Bad(fields('"max_time": -Infinity'), 400, "max_time",
                                   "not -Infinity"),
    "nan-top-p": Bad(fields('"top_p": NaN'), 400, "top_p", "not NaN"),
    "nan-seed": Bad(fields('"seed": NaN'), 400, "seed", "not NaN"),
    "nan-n-samples": Bad(fields('"n_samples": NaN'), 400, "n_samples", "not NaN", FRONT),
    # Huge numbers: 1e400 reads as Infinity; 10**400 is an exact integer no float holds
    "1e400-temperature": Bad(fields('"temperature": 1e400'), 400, "temperature", "Infinity"),
    "1e400-length": Bad(fields('"length": 1e400'), 400, "length", "not Infinity"),
    "-1e400-top-p": Bad(fields('"top_p": -1e400'), 400, "top_p", "-Infinity"),
    "10**400-temperature": Bad(fields(f'"temperature": {10**400}'), 400, "temperature",
                               "at most 100, not 1000"),
    "-10**400-max-time": Bad(fields(f'"max_time": {-(10**400)}'), 400, "max_time",
                             "above 0 and at most"),
    "10**100-length": Bad(fields(f'"length": {10**100}'), 400, "length", "between 1 and"),
    "10**100-top-k": Bad(fields(f'"top_k": {10**100}'), 400, "top_k", f"and {MAX_TOP_K}"),
    "10**100-seed": Bad(fields(f'"seed": {10**100}'), 400, "seed", f"and {MAX_SEED}"),
    "10**100-max-tokens": Bad(fields(f'"max_tokens": {10**100}'), 400, "max_tokens",
                              f"and {MAX_CONTEXT_TOKENS}"),
    "seed-past-max": Bad(fields(f'"seed": {MAX_SEED + 1}'), 400, "seed", "between 0 and"),
    # Negative numbers
    "negative-length": Bad(fields('"length": -1'), 400, "length", "not -1"),
    "negative-top-k": Bad(fields('"top_k": -1'), 400, "top_k", "not -1"),
    "negative-temperature": Bad(fields('"temperature": -0.5'), 400, "temperature",
                                "at least 0"),
    "negative-top-p": Bad(fields('"top_p": -0.1'), 400, "top_p", "above 0"),
    "negative-max-time": Bad(fields('"max_time": -1'), 400, "max_time", "above 0"),
    "zero-max-time": Bad(fields('"max_time": 0'), 400, "max_time", "above 0"),
    "negative-seed": Bad(fields('"seed": -1'), 400, "seed", "not -1"),
    "negative-max-tokens": Bad(fields('"max_tokens": -5'), 400, "max_tokens", "not -5"),
    "negative-n-samples": Bad(fields('"n_samples": -3'), 400, "n_samples", "not -3", FRONT),
    # Booleans and other wrong types
    "true-temperature": Bad(fields('"temperature": true'), 400, "temperature",
                            "not a boolean"),
    "false-length": Bad(fields('"length": false'), 400, "length", "not a boolean"),
    "true-seed": Bad(fields('"seed": true'), 400, "seed", "not a boolean"),
    "true-n-samples": Bad(fields('"n_samples": true'), 400, "n_samples", "not a boolean",
                          FRONT),
    "array-context": Bad(b'{"context": ["x"]}', 400, "context", "not an array"),
    "object-context": Bad(b'{"context": {"text": "x"}}', 400, "context", "not an object"),
    "string-length": Bad(fields('"length": "20"'), 400, "length", "not a string"),
    "fractional-seed": Bad(fields('"seed": 1.5'), 400, "seed", "not a number"),
    "array-max-tokens": Bad(fields('"max_tokens": []'), 400, "max_tokens", "not an array"),
    "object-top-p": Bad(fields('"top_p": {}'), 400, "top_p", "not an object"),
    "number-model-size": Bad(fields('"model_size": 3'), 400, "model_size", "not an integer",
                             FRONT),
    # Past the limits
    "n-samples-over-cap": Bad(lambda s: fields(f'"n_samples": {s.max_samples + 1}'), 400,
                              "n_samples", "between 1 and", FRONT),
    "zero-n-samples": Bad(fields('"n_samples": 0'), 400, "n_samples", "between 1 and", FRONT),
    "length-over-limit": Bad(lambda s: fields(f'"length": {s.length + 1}'), 400, "length",
                             "between 1 and", WORKER),
    "length-at-window": Bad(lambda s: fields(f'"length": {s.window}'), 400, "length",
                            "window", WORKER),
    # Multi-byte: within the limit in characters, over it in bytes (sent as raw UTF-8).
    "context-over-bytes": Bad(
        lambda s: json.dumps({"context": "é" * (s.context_bytes // 2 + 1)},
                             ensure_ascii=False).encode("utf-8"),
        413, "context", "bytes"),
    "body-over-limit": Bad(lambda s: fields(f'"top_k": {"0" * s.worker_body_bytes}1'), 413,
                           None, "bytes", WORKER),
    "100000-brackets": Bad(b"[" * 100_000, 413, None, "larger than"),

    "nested-too-deeply": Bad(lambda s: b"[" * (s.max_body_bytes - 10), 400, None,
                             "nested too deeply", WORKER),
    # Text that is not text
    "raw-control-character": Bad(b'{"context": "a\x00b"}', 400, None, "not valid JSON"),
    "invalid-utf8": Bad(b'{"context": "\xff"}', 400, None, "not valid UTF-8", WORKER),
    "utf8-encoded-surrogate": Bad(b'{"context": "\xed\xa0\x80"}', 400, None,
                                  "not valid UTF-8"),
    "lone-surrogate-escape": Bad(b'{"context": "ab\\ud800"}', 400, "context",
                                 "lone surrogate at character 2"),
    "lone-surrogate-model-size": Bad(fields('"model_size": "\\udfff"'), 400, "model_size",
                                     "lone surrogate", FRONT),
    "lone-surrogate-field-name": Bad(fields('"\\udc00x": 1'), 400, "\\udc00x",
                                     "unknown field"),
    # Names the server does not know
    "unknown-field": Bad(fields('"prompt": "y"'), 400, "prompt", "unknown field (allowed:"),
    "n-samples-at-the-worker": Bad(fields('"n_samples": 2'), 400, "n_samples",
                                   "unknown field", WORKER),
    "model-size-at-the-worker": Bad(fields('"model_size": "small"'), 400, "model_size",
                                    "unknown field", WORKER),
    "unknown-model-case": Bad(fields('"model_size": "Small"'), 404, "model_size",
                              "choose one of small, ghost", FRONT),
    "empty-model-size": Bad(fields('"model_size": ""'), 404, "model_size", "unknown model",
                            FRONT),
    # Errors are JSON whatever the client accepts (Falcon would have sent XML)
    "xml-accepted": Bad(fields('"length": 0'), 400, "length", "between 1 and",
                        headers={**JSON_TYPE, "Accept": "application/xml"}),
}


def good_request(tiers: RunningTiers, target: str) -> requests.Response:
    body: dict[str, Any] = {"context": "The nation", "length": 1, "max_time": 5}
    if target == "front":
        body["n_samples"] = 1
    return requests.post(url(tiers, target), json=body, timeout=20)


def still_serving(tiers: RunningTiers, target: str, workers: dict[str, int]) -> None:
    """Nothing crashed or hung: the same worker processes, and a good request answers."""
    answer = good_request(tiers, target)
    assert answer.status_code == 200, answer.text
    assert tiers.ready_slots("small") == workers
    assert tiers.processes["front"].poll() is None


CASES = [pytest.param(target, row, id=f"{target}-{name}")
         for name, row in ROWS.items() for target in row.targets]


@pytest.mark.parametrize(("target", "row"), CASES)
def test_bad_input_is_a_4xx_naming_the_problem(tiers: RunningTiers, sizes: Sizes, target: str,
                                               row: Bad) -> None:
    workers = tiers.ready_slots("small")
    body = row.body(sizes) if callable(row.body) else row.body
    headers = JSON_TYPE if row.headers is None else row.headers

    response = requests.post(url(tiers, target), data=body, headers=headers, timeout=20)

    assert response.status_code == row.status, response.text
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()
    assert error["title"] and row.words in error["description"], error
    assert error.get("field") == row.field, error
    if row.field is not None:
        assert error["description"].startswith(f"{row.field}: "), error
    still_serving(tiers, target, workers)


EDGES: dict[str, dict[str, Any] | Callable[[Sizes], dict[str, Any]]] = {
    "vanishing-temperature": {"temperature": 1e-300},  # sampled: logits overflowed to inf
    "denormal-temperature": {"temperature": 5e-324},
    "top-temperature": {"temperature": 100},
    "denormal-top-p": {"top_p": 5e-324},
    "largest-top-k": {"top_k": MAX_TOP_K},
    "vanishing-max-time": {"max_time": 1e-300},
    "largest-seed": {"seed": MAX_SEED},  # the front's samples wrap round to 0, 1, ...
    "largest-max-tokens": {"max_tokens": MAX_CONTEXT_TOKENS},
    "one-context-token": {"max_tokens": 1},
    "integral-float-length": {"length": 2.0},
    "nulls-take-the-defaults": {"temperature": None, "top_k": None, "seed": None},
    "empty-context": {"context": ""},
    "nul-in-context": {"context": "a\u0000b"},
    "context-at-the-byte-limit": lambda s: {"context": "é" * (s.context_bytes // 2)},
}


@pytest.mark.parametrize("target", BOTH)
@pytest.mark.parametrize("extra", EDGES.values(), ids=EDGES.keys())
def test_values_at_the_edges_of_the_rules_are_served(
        tiers: RunningTiers, sizes: Sizes, target: str,
        extra: dict[str, Any] | Callable[[Sizes], dict[str, Any]]) -> None:
    extra = extra(sizes) if callable(extra) else extra
    body: dict[str, Any] = {"context": "The nation", "length": 3, **extra}
    if target == "front":
        body["n_samples"] = 3
    data = json.dumps(body, ensure_ascii=False).encode("utf-8")  # the context's bytes as sent

    response = requests.post(url(tiers, target), data=data, headers=JSON_TYPE, timeout=30)

    assert response.status_code == 200, response.text
    answer = response.json()
    if target == "front":
        assert len(answer["sentences"]) == 3 and not answer["partial"]
        if extra.get("seed") == MAX_SEED:
            assert [s["seed"] for s in answer["sentences"]] == [MAX_SEED, 0, 1]
    else:
        assert answer["tokens"] <= 3


@pytest.mark.parametrize("target", BOTH)
def test_a_charset_on_the_json_content_type_is_fine(tiers: RunningTiers, target: str) -> None:
    response = requests.post(url(tiers, target), data=fields('"length": 1'), timeout=20,
                             headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text


def test_the_worker_takes_the_largest_body_the_front_can_send(tiers: RunningTiers,
                                                              sizes: Sizes) -> None:
    # A context at the byte limit, written back out as JSON by the front: "\u0000" is
    # six bytes for one, far past front.max_body_bytes.
    body = {"context": "\u0000" * sizes.context_bytes, "length": 1, "max_tokens": 1,
            "seed": MAX_SEED, "temperature": 0.123456789, "top_p": 0.987654321,
            "top_k": MAX_TOP_K, "max_time": 1.23456789}
    data = json.dumps(body).encode()
    assert len(data) > 3 * sizes.max_body_bytes

    response = requests.post(url(tiers, "worker"), data=data, headers=JSON_TYPE, timeout=20)
    assert response.status_code == 200, response.text
