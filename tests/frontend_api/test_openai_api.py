"""The OpenAI routes of the front through falcon.testing, over the in-process fan-out.

What the front decides is checked here: which samples a request fans out (batches, n,
best_of), how their answers become OpenAI's choices, usage and stream chunks, and which
fields are refused or ignored. The same features end to end, through the client
libraries against real tiers, are in tests/integration/test_openai_clients.py.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import falcon.testing
import pytest

from fanout.layout import Layout, load_layout
from frontend_api.app import create_app
from frontend_api.errors import WorkerTierError
from tests.conftest import LayoutFactory
from tests.frontend_api.test_resources import EchoFanout


@pytest.fixture
def layout(write_layout: LayoutFactory) -> Layout:
    return load_layout(write_layout(pools={
        "small": {"bind": "127.0.0.1:9101", "slots": ["cpu"]},
        "medium": {"bind": "127.0.0.1:9102", "slots": ["cpu", "cpu"]}}))


def post(layout: Layout, fanout: EchoFanout, body: dict[str, Any],
         path: str = "/v1/completions") -> falcon.testing.Result:
    return falcon.testing.TestClient(create_app(layout, fanout)).simulate_post(path, json=body)


def events(result: falcon.testing.Result) -> list[Any]:
    """The data of a server-sent event stream, [DONE] included."""
    data = [line.removeprefix("data: ") for line in result.text.split("\n\n") if line]
    return [json.loads(item) if item != "[DONE]" else item for item in data]


def test_a_batch_of_prompts_fans_out_prompts_times_n(layout: Layout) -> None:
    fanout = EchoFanout()
    answer = post(layout, fanout, {"model": "small", "prompt": ["ab", "xyz"], "n": 2,
                                   "seed": 5, "max_tokens": 3}).json

    [request] = fanout.seen
    assert request.n_samples == 4
    assert [(p.context, p.seed) for p in request.sample_params()] == [
        ("ab", 5), ("ab", 6), ("xyz", 5), ("xyz", 6)]  # each prompt as if sent alone
    assert [(c["index"], c["text"]) for c in answer["choices"]] == [
        (0, "ba"), (1, "ba"), (2, "zyx"), (3, "zyx")]
    # Each prompt counted once; every sample's tokens.
    assert answer["usage"] == {"prompt_tokens": 2 + 3, "completion_tokens": 4 * 3,
                               "total_tokens": 17}


@pytest.mark.parametrize("prompt", [[15496, 995], [[15496, 995], [7]]])
def test_token_id_prompts_go_to_the_workers_as_ids(layout: Layout, prompt: Any) -> None:
    fanout = EchoFanout()
    assert post(layout, fanout, {"model": "small", "prompt": prompt}).status_code == 200
    [request] = fanout.seen
    expected = [prompt] if isinstance(prompt[0], int) else prompt
    assert [list(p.context_ids or ()) for p in request.sample_params()] == expected
    assert all(p.to_json()["context_ids"] for p in request.sample_params())


def test_best_of_keeps_the_likeliest_n_of_each_prompt(layout: Layout) -> None:
    fanout = EchoFanout()
    answer = post(layout, fanout, {"model": "small", "prompt": ["ab", "cd"], "n": 1,
                                   "best_of": 3, "seed": 10}).json

    [request] = fanout.seen
    assert request.n_samples == 6
    # The workers were asked for log-probabilities (to rank by), the client was not.
    assert all(p.logprobs == 0 for p in request.sample_params())
    assert [(c["index"], c["text"], c["logprobs"]) for c in answer["choices"]] == [
        (0, "ba", None), (1, "dc", None)]
    assert answer["usage"]["completion_tokens"] == 6 * 16  # the discarded ones were made


def test_echo_puts_the_prompt_in_front_and_logprobs_cover_it(layout: Layout) -> None:
    answer = post(layout, EchoFanout(), {"model": "small", "prompt": "abc", "echo": True,
                                         "logprobs": 1, "max_tokens": 0}).json
    [choice] = answer["choices"]
    assert choice["text"] == "abc" + "cba"
    assert "".join(choice["logprobs"]["tokens"]) == choice["text"]


@pytest.mark.parametrize(("body", "field"), [
    ({"suffix": " end"}, "suffix"),
    ({"max_tokens": 0}, "max_tokens"),  # generating nothing is only for echo's scoring
    ({"best_of": 1, "n": 2}, "best_of"),
    ({"best_of": 2, "stream": True}, "best_of"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"stream": True, "stream_options": {"include_usage": "yes"}},
     "stream_options.include_usage"),
    ({"logprobs": 6}, "logprobs"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"logit_bias": {"50256": -101}}, "logit_bias"),
    ({"logit_bias": {"eos": 1}}, "logit_bias"),
    ({"logit_bias": [1]}, "logit_bias"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": ["a"] * 5, "n": 2}, "prompt"),  # 10 samples, past front.max_samples
])
def test_bad_openai_fields_are_400s_in_openais_shape(layout: Layout, body: dict[str, Any],
                                                    field: str) -> None:
    fanout = EchoFanout()
    result = post(layout, fanout, {"model": "small", "prompt": "x", **body})
    assert result.status_code == 400, result.text
    error = result.json["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"
    assert error["message"]
    assert not fanout.seen


def test_the_suffix_error_says_there_is_no_fill_in_the_middle(layout: Layout) -> None:
    result = post(layout, EchoFanout(), {"model": "small", "prompt": "x", "suffix": "y"})
    assert "fill-in-the-middle" in result.json["error"]["message"]


def test_neutral_values_change_nothing(layout: Layout) -> None:
    fanout = EchoFanout()
    neutral = {"frequency_penalty": 0, "presence_penalty": 0, "logit_bias": {},
               "logprobs": None, "best_of": 1, "echo": False, "suffix": "", "user": "u",
               "stream": False, "stream_options": None, "seed": None, "stop": None}
    post(layout, fanout, {"model": "small", "prompt": "ab"})
    post(layout, fanout, {"model": "small", "prompt": "ab", **neutral})
    plain, same = fanout.seen
    assert plain == same
    # and what the workers get is the same body as before these fields existed
    assert set(same.params.to_json()) == {"context", "length", "temperature", "top_k",
                                          "top_p", "max_time"}


def test_fields_openai_does_not_have_are_ignored_and_logged(
        layout: Layout, caplog: pytest.LogCaptureFixture) -> None:
    fanout = EchoFanout()
    with caplog.at_level(logging.WARNING, logger="frontend_api.openai_api"):
        result = post(layout, fanout, {"model": "small", "prompt": "ab",
                                       "no_such_field": 1, "another": {"x": 1}})
    assert result.status_code == 200
    assert "another, no_such_field" in caplog.text
    # /autocomplete keeps its strict checking
    strict = post(layout, fanout, {"context": "ab", "no_such_field": 1}, "/autocomplete")
    assert strict.status_code == 400 and strict.json["field"] == "no_such_field"


def test_a_stream_with_usage_ends_with_a_usage_chunk(layout: Layout) -> None:
    result = post(layout, EchoFanout(), {
        "model": "small", "prompt": ["ab", "cde"], "max_tokens": 4, "stream": True,
        "stream_options": {"include_usage": True}, "logprobs": 0, "echo": True})

    *chunks, usage, done = events(result)
    assert done == "[DONE]"
    assert usage["choices"] == [] and usage["usage"] == {
        "prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}
    texts: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    for chunk in chunks:
        [part] = chunk["choices"]
        texts[part["index"]] = texts.get(part["index"], "") + part["text"]
        if part["logprobs"] is not None:
            tokens.setdefault(part["index"], []).extend(part["logprobs"]["tokens"])
    assert texts == {0: "abba", 1: "cdeedc"}  # echoed prompt, then the completion
    assert {i: "".join(t) for i, t in tokens.items()} == texts  # every entry once


def test_models_retrieve_one_model(layout: Layout) -> None:
    client = falcon.testing.TestClient(create_app(layout, EchoFanout()))
    assert client.simulate_get("/v1/models/medium").json["id"] == "medium"
    missing = client.simulate_get("/v1/models/large")
    assert missing.status_code == 404
    assert missing.json["error"]["code"] == "model_not_found"


def test_tokenize_and_detokenize_ask_one_worker_of_the_pool(layout: Layout) -> None:
    fanout = EchoFanout()
    tokens = post(layout, fanout, {"model": "medium", "prompt": "hi"}, "/tokenize").json
    text = post(layout, fanout, {"tokens": [104, 105]}, "/detokenize").json

    assert tokens == {"tokens": [104, 105], "count": 2, "max_model_len": 1024}
    assert text == {"prompt": "hi"}
    assert fanout.asked == [("medium", "/tokenize", {"prompt": "hi"}),
                            ("small", "/detokenize", {"tokens": [104, 105]})]


@pytest.mark.parametrize(("path", "body", "field", "status"), [
    ("/tokenize", {"prompt": 1}, "prompt", 400),
    ("/tokenize", {"text": "x"}, "text", 400),
    ("/tokenize", {"model": "large", "prompt": "x"}, "model", 404),
    ("/detokenize", {}, "tokens", 400),
    ("/detokenize", {"tokens": ["a"]}, "tokens", 400),
])
def test_bad_tokenizer_requests_are_named(layout: Layout, path: str, body: dict[str, Any],
                                          field: str, status: int) -> None:
    fanout = EchoFanout()
    result = post(layout, fanout, body, path)
    assert (result.status_code, result.json["field"]) == (status, field)
    assert not fanout.asked


def test_a_worker_refusing_a_token_id_is_the_clients_error(layout: Layout) -> None:
    fanout = EchoFanout(failure=WorkerTierError(400, "Invalid parameter",
                                                "token 99999 is outside the vocabulary",
                                                field="tokens"))
    result = post(layout, fanout, {"tokens": [99999]}, "/detokenize")
    assert (result.status_code, result.json["field"]) == (400, "tokens")
