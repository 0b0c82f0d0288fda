"""The OpenAI-compatible API with OpenAI's own Python client, against real tiers."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from tests.integration.servers import RunningTiers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(tiers: RunningTiers) -> openai.OpenAI:
    # No retries: a refused request should show here, not be sent again by the client.
    return openai.OpenAI(base_url=f"{tiers.front_url}/v1", api_key="unused", max_retries=0,
                         timeout=60)


def test_a_plain_completion(client: openai.OpenAI) -> None:
    answer = client.completions.create(model="small", prompt="The nation", max_tokens=5,
                                       seed=1)

    assert answer.object == "text_completion" and answer.model == "small"
    assert answer.id.startswith("cmpl-")
    [only] = answer.choices
    assert only.index == 0 and only.finish_reason in ("length", "stop") and only.text
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == 2  # "The nation": GPT-2's tokens " nation", "The"
    assert answer.usage.completion_tokens <= 5
    assert answer.usage.total_tokens == 2 + answer.usage.completion_tokens


def test_n_choices_come_from_the_fanout(client: openai.OpenAI, tiers: RunningTiers) -> None:
    answer = client.completions.create(model="small", prompt="The nation", max_tokens=8,
                                       n=3, seed=7)
    again = client.completions.create(model="small", prompt="The nation", max_tokens=8,
                                      n=3, seed=7)

    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert [c.text for c in answer.choices] == [c.text for c in again.choices]  # seeded
    assert len({c.text for c in answer.choices}) > 1  # seeds 7, 8, 9: different samples
    assert answer.usage is not None
    assert answer.usage.completion_tokens <= 3 * 8


def test_stop_sequences_end_the_text_before_them(client: openai.OpenAI) -> None:
    greedy = dict(model="small", prompt="The nation", max_tokens=20, temperature=0)
    full = client.completions.create(**greedy).choices[0].text  # type: ignore[call-overload]
    stop = full[len(full) // 2:len(full) // 2 + 2]  # two characters from the middle
    cut = client.completions.create(**greedy, stop=[stop]).choices[0]  # type: ignore[call-overload]

    assert cut.text == full[:full.find(stop)]
    assert cut.finish_reason == "stop"


def test_streaming_n_choices_add_up_to_the_same_completions(client: openai.OpenAI) -> None:
    request = dict(model="small", prompt="The nation", max_tokens=12, n=3, seed=11)
    whole = client.completions.create(**request)  # type: ignore[call-overload]
    texts: dict[int, str] = {0: "", 1: "", 2: ""}
    finished: dict[int, str] = {}
    chunks = 0
    for chunk in client.completions.create(**request, stream=True):  # type: ignore[call-overload]
        [part] = chunk.choices
        assert part.index not in finished  # nothing after a choice's last chunk
        texts[part.index] += part.text
        if part.finish_reason is not None:
            finished[part.index] = part.finish_reason
        chunks += 1

    assert texts == {c.index: c.text for c in whole.choices}
    assert finished == {c.index: c.finish_reason for c in whole.choices}
    assert chunks > 3 * 2  # pieces as they came, not one chunk per choice


def test_a_stream_stops_at_a_stop_sequence(client: openai.OpenAI) -> None:
    greedy = dict(model="small", prompt="The nation", max_tokens=20, temperature=0)
    full = client.completions.create(**greedy).choices[0].text  # type: ignore[call-overload]
    stop = full[len(full) // 2:len(full) // 2 + 2]
    streamed = "".join(chunk.choices[0].text for chunk in client.completions.create(
        **greedy, stop=stop, stream=True))  # type: ignore[call-overload]
    assert streamed == full[:full.find(stop)]


def test_a_stream_from_a_pool_that_is_down_is_a_503(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(model="ghost", prompt="x", max_tokens=2, stream=True)
    assert caught.value.status_code == 503


def test_models_lists_the_pools(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["small", "ghost"]


@pytest.mark.parametrize(("request_args", "error", "param", "words"), [
    ({"model": "large"}, openai.NotFoundError, "model", "does not exist"),
    ({"n": 99}, openai.BadRequestError, "n", "between 1 and 8"),
    ({"max_tokens": 0}, openai.BadRequestError, "max_tokens", "between 1 and"),
    ({"temperature": 3}, openai.BadRequestError, "temperature", "at most 2"),
    ({"prompt": ["a"] * 5, "n": 2}, openai.BadRequestError, "prompt", "at most 8 per request"),
    ({"suffix": "x"}, openai.BadRequestError, "suffix", "fill-in-the-middle"),
    ({"stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, "stop", "at most 4"),
    ({"stream": "yes"}, openai.BadRequestError, "stream", "true or false"),
])
def test_errors_have_openais_shape(client: openai.OpenAI, request_args: dict[str, object],
                                   error: type[openai.APIStatusError], param: str | None,
                                   words: str) -> None:
    arguments = {"model": "small", "prompt": "x", "max_tokens": 2, **request_args}
    with pytest.raises(error) as caught:
        client.completions.create(**arguments)  # type: ignore[call-overload]
    body = caught.value.body
    assert isinstance(body, dict) and words in body["message"]
    assert body["param"] == param
    assert body["type"] == ("not_found_error" if error is openai.NotFoundError
                            else "invalid_request_error")


def test_a_pool_that_is_down_is_a_503_in_openais_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.completions.create(model="ghost", prompt="x", max_tokens=2)
    assert caught.value.status_code == 503
    assert caught.value.response.headers["retry-after"]
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "server_error"


def test_the_stream_is_server_sent_events_ending_with_done(tiers: RunningTiers) -> None:
    with requests.post(f"{tiers.front_url}/v1/completions", stream=True, timeout=60,
                       json={"model": "small", "prompt": "x", "max_tokens": 4, "n": 2,
                             "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines(decode_unicode=True) if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    finishes = [json.loads(e[6:])["choices"][0] for e in events[:-1]]
    assert sorted(c["index"] for c in finishes if c["finish_reason"]) == [0, 1]


def test_max_tokens_is_a_hard_cap_unless_stop_at_asks(client: openai.OpenAI) -> None:
    """OpenAI's clients count on max_tokens: /v1 ends texts there; stop_at and distinct
    are fanout's extensions (sent through the client's extra_body)."""
    plain = client.completions.create(model="small", prompt="The nation", max_tokens=6, n=3,
                                      seed=3)
    assert plain.usage is not None and plain.usage.completion_tokens == 18
    assert "resampled" not in plain.model_dump()
    words = client.completions.create(model="small", prompt="The nation", max_tokens=6, n=3,
                                      seed=3, extra_body={"stop_at": "word"})
    for clean, raw in zip(words.choices, plain.choices, strict=True):
        # The same seed: the whole words of the same text, a word finished or cut back.
        assert clean.text.startswith(raw.text) or raw.text.startswith(clean.text)
    distinct = client.completions.create(model="small", prompt="The nation", max_tokens=6,
                                         n=3, seed=3, extra_body={
                                             "distinct": True,
                                             "exclude": [c.text for c in plain.choices]})
    assert not {c.text for c in distinct.choices} & {c.text for c in plain.choices}
    assert distinct.model_dump()["resampled"] >= 3


def test_a_stream_cannot_be_distinct(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="distinct"):
        client.completions.create(model="small", prompt="x", max_tokens=2, stream=True,
                                  extra_body={"distinct": True})
