"""Request parameters: defaults, limits, and errors that name the field."""

from __future__ import annotations

from typing import Any

import pytest

from fanout.layout import GenerationDefaults, GenerationLimits
from fanout.params import ParamError, parse_generation
from frontend_api.openai_request import parse_completion
from frontend_api.resources import parse_autocomplete

DEFAULTS = GenerationDefaults()
LIMITS = GenerationLimits(length=100, max_time=10.0, context_bytes=64)
POOLS = {"small": object(), "medium": object()}


def autocomplete(body: Any) -> Any:
    return parse_autocomplete(body, DEFAULTS, LIMITS, POOLS, max_samples=5)


def test_missing_fields_take_the_defaults() -> None:
    request = autocomplete({"context": "The nation"})
    assert request.model_size == "small" and request.n_samples == DEFAULTS.n_samples
    assert request.params.length == DEFAULTS.length and request.params.seed is None
    assert request.params.to_json() == {
        "context": "The nation", "length": 20, "temperature": 1.0, "top_k": 40, "top_p": 0.9,
        "max_time": 3.0, "stop_at": "word"}  # the layout's default: whole words
    assert not request.distinct and request.exclude == ()


def test_a_seed_spreads_over_the_samples() -> None:
    request = autocomplete({"context": "x", "n_samples": 3, "seed": 7, "model_size": "medium"})
    assert [p.seed for p in request.sample_params()] == [7, 8, 9]
    unseeded = autocomplete({"context": "x", "n_samples": 2})
    assert [p.seed for p in unseeded.sample_params()] == [None, None]


def test_integers_are_accepted_where_numbers_are_expected() -> None:
    params = parse_generation({"context": "", "temperature": 0, "max_time": 2},
                              DEFAULTS, LIMITS)
    assert params.temperature == 0.0 and params.max_time == 2.0


def test_integral_numbers_are_integers_and_null_is_left_out() -> None:
    # JSON has one number type: 3.0 is 3 (as JSON Schema and JavaScript see it).
    request = autocomplete({"context": "x", "n_samples": 3.0, "seed": 1e3, "length": None,
                            "model_size": None})
    assert (request.n_samples, request.params.seed) == (3, 1000)
    assert isinstance(request.n_samples, int) and isinstance(request.params.seed, int)
    assert request.params.length == DEFAULTS.length and request.model_size == "small"


@pytest.mark.parametrize(("body", "field", "status", "reason"), [
    ({}, "context", 400, "is required"),
    ({"context": 3}, "context", 400, "must be a string"),
    ({"context": "é" * 33}, "context", 413, "longer than 64 bytes"),
    ({"context": "x", "length": 0}, "length", 400, "between 1 and 100"),
    ({"context": "x", "length": 10**30}, "length", 400, "between 1 and 100"),
    ({"context": "x", "length": 2.5}, "length", 400, "must be an integer"),
    ({"context": "x", "length": True}, "length", 400, "must be an integer"),
    ({"context": "x", "temperature": float("nan")}, "temperature", 400, "finite"),
    ({"context": "x", "temperature": float("inf")}, "temperature", 400, "finite"),
    ({"context": "x", "temperature": -1}, "temperature", 400, "at least 0"),
    ({"context": "x", "temperature": 10**400}, "temperature", 400, "(401 characters)"),
    ({"context": "x", "length": float("inf")}, "length", 400, "not Infinity"),
    ({"context": "x\ud800"}, "context", 400, "lone surrogate at character 1"),
    ({"context": "x", "\udc00": 1}, "\\udc00", 400, "unknown field"),
    ({"context": "x", "top_p": 0}, "top_p", 400, "above 0"),
    ({"context": "x", "max_time": 11}, "max_time", 400, "at most 10"),
    ({"context": "x", "seed": -1}, "seed", 400, "between 0 and"),
    ({"context": "x", "n_samples": 6}, "n_samples", 400, "between 1 and 5"),
    ({"context": "x", "model_size": "huge"}, "model_size", 404, "choose one of small, medium"),
    ({"context": "x", "temprature": 1}, "temprature", 400, "unknown field"),
    ([], "body", 400, "must be a JSON object, not an array"),
])
def test_bad_fields_are_named(body: Any, field: str, status: int, reason: str) -> None:
    with pytest.raises(ParamError) as caught:
        autocomplete(body)
    assert (caught.value.field, caught.value.status) == (field, status)
    assert reason in caught.value.reason


def test_the_worker_refuses_front_only_fields() -> None:
    with pytest.raises(ParamError, match="n_samples: unknown field"):
        parse_generation({"context": "x", "n_samples": 3}, DEFAULTS, LIMITS)


def completion(body: Any) -> Any:
    return parse_completion(body, DEFAULTS, LIMITS, POOLS, max_samples=5)


def test_openai_completions_take_openais_defaults() -> None:
    parsed = completion({"model": "medium", "prompt": ["The nation"], "user": "u-1"})
    request, params = parsed.request, parsed.request.params
    assert (request.model_size, request.n_samples, parsed.stream) == ("medium", 1, False)
    assert (params.context, params.length, params.temperature, params.top_k, params.top_p) == (
        "The nation", 16, 1.0, 0, 1.0)
    assert params.stop == () and "stop" not in params.to_json()
    stopped = completion({"model": "small", "prompt": "x", "stop": "\n", "n": 2})
    assert stopped.request.params.stop == ("\n",) and stopped.request.n_samples == 2
    assert stopped.request.params.to_json()["stop"] == ("\n",)
    # top_k is an extension (the editor sends it): off unless asked for.
    assert completion({"model": "small", "top_k": 5}).request.params.top_k == 5


@pytest.mark.parametrize(("body", "field", "status"), [
    ({"prompt": "x"}, "model", 400),
    ({"model": "large", "prompt": "x"}, "model", 404),
    ({"model": "small", "prompt": []}, "prompt", 400),
    ({"model": "small", "prompt": [7, "b"]}, "prompt", 400),
    ({"model": "small", "prompt": ["a", 7]}, "prompt", 400),
    ({"model": "small", "prompt": "x" * 65}, "prompt", 413),
    ({"model": "small", "stream": "yes"}, "stream", 400),
    ({"model": "small", "stop": [""]}, "stop", 400),
    ({"model": "small", "stop": [1]}, "stop", 400),
    ({"model": "small", "temperature": 2.5}, "temperature", 400),
    ({"model": "small", "top_k": -1}, "top_k", 400),
    ({"model": "small", "top_k": 2.5}, "top_k", 400),
])
def test_bad_openai_fields_are_named(body: Any, field: str, status: int) -> None:
    with pytest.raises(ParamError) as caught:
        completion(body)
    assert (caught.value.field, caught.value.status) == (field, status)


def test_the_autocomplete_route_has_no_stop_but_the_worker_does() -> None:
    with pytest.raises(ParamError, match="stop: unknown field"):
        autocomplete({"context": "x", "stop": "."})
    assert parse_generation({"context": "x", "stop": [".", "!"]}, DEFAULTS,
                            LIMITS).stop == (".", "!")


def test_the_worker_reads_stop_at_and_takes_none_when_left_out() -> None:
    assert parse_generation({"context": "x"}, DEFAULTS, LIMITS).stop_at == "none"
    sentence = parse_generation({"context": "x", "stop_at": "sentence"}, DEFAULTS, LIMITS)
    assert sentence.stop_at == "sentence" and sentence.to_json()["stop_at"] == "sentence"
    with pytest.raises(ParamError, match="stop_at: must be one of none, word, sentence, "
                                         "line, paragraph, not 'clause'"):
        parse_generation({"context": "x", "stop_at": "clause"}, DEFAULTS, LIMITS)
    with pytest.raises(ParamError, match="stop_at: must be a string"):
        parse_generation({"context": "x", "stop_at": 1}, DEFAULTS, LIMITS)


def test_distinct_and_exclude_on_both_routes() -> None:
    asked = autocomplete({"context": "x", "distinct": True, "exclude": ["a b", ""],
                          "stop_at": "sentence"})
    assert (asked.distinct, asked.exclude, asked.params.stop_at) == (True, ("a b", ""),
                                                                     "sentence")
    openai = completion({"model": "small", "prompt": "x", "distinct": True, "exclude": ["a"]})
    assert (openai.request.distinct, openai.request.exclude) == (True, ("a",))
    # OpenAI's route keeps max_tokens a hard cap unless stop_at asks otherwise.
    assert completion({"model": "small"}).request.params.stop_at == "none"
    assert completion({"model": "small", "stop_at": "word"}).request.params.stop_at == "word"
    assert autocomplete({"context": "x", "exclude": ["a"]}).distinct  # exclude asks for it


@pytest.mark.parametrize(("body", "field", "reason"), [
    ({"distinct": True, "exclude": "a"}, "exclude", "must be a list of strings"),
    ({"distinct": True, "exclude": ["a"] * 17}, "exclude", "at most 16 texts"),
    ({"distinct": True, "exclude": ["a" * 2049]}, "exclude", "at most 2048 characters"),
    ({"distinct": 1}, "distinct", "must be true or false"),
    ({"stop_at": "clause"}, "stop_at", "must be one of none, word"),
])
def test_bad_distinct_fields_are_named(body: dict[str, Any], field: str, reason: str) -> None:
    for parse, base in ((autocomplete, {"context": "x"}), (completion, {"model": "small"})):
        with pytest.raises(ParamError) as caught:
            parse({**base, **body})
        assert caught.value.field == field and reason in caught.value.reason


def test_a_stream_cannot_be_distinct() -> None:
    with pytest.raises(ParamError, match="distinct: cannot be used with stream"):
        completion({"model": "small", "stream": True, "distinct": True})
