"""The front-worker contract: what one tier writes, the other reads back unchanged."""

from __future__ import annotations

import json

import pytest

from fanout.protocol import (
    GenerationParams,
    LogprobsJson,
    StreamLine,
    StreamPiece,
    WorkerCompletion,
    decode_line,
    encode_line,
)

LOGPROBS: LogprobsJson = {"tokens": ["Hi", "!"], "token_logprobs": [None, -0.5],
                          "top_logprobs": [None, {"!": -0.5}], "text_offset": [0, 2]}
WORKER = {"pid": 7, "slot": 0, "device": "cpu", "pool": "small"}


def test_a_plain_completion_sends_only_its_fields_in_order() -> None:
    done = WorkerCompletion(text=" world", time=0.123456, tokens=1, finish_reason="length",
                            seed=3, worker=WORKER, context_tokens=2)
    assert list(done.to_json().items()) == [
        ("text", " world"), ("tokens", 1), ("finish_reason", "length"), ("time", 0.1235),
        ("seed", 3), ("context_tokens", 2), ("worker", WORKER)]


def test_a_completion_with_echo_and_logprobs_reads_back_as_written() -> None:
    done = WorkerCompletion(text="!", time=0.5, tokens=1, finish_reason="stop", seed=None,
                            worker=WORKER, context_tokens=1, logprobs=LOGPROBS,
                            cumulative_logprob=-0.5, prompt_text="Hi")
    body = json.loads(json.dumps(done.to_json()))
    assert list(body) == ["text", "tokens", "finish_reason", "time", "seed", "context_tokens",
                          "prompt_text", "logprobs", "cumulative_logprob", "worker"]
    assert WorkerCompletion.from_json(body) == done


def test_a_completion_without_a_required_field_names_it() -> None:
    with pytest.raises(KeyError, match="worker"):
        WorkerCompletion.from_json({"text": "", "time": 0, "tokens": 0,
                                    "finish_reason": "stop", "seed": None})


def test_stream_lines_read_back_as_written() -> None:
    done = WorkerCompletion(text="ab", time=0.0, tokens=2, finish_reason="length", seed=1,
                            worker=WORKER)
    lines: list[StreamLine] = [StreamPiece("a"), StreamPiece("", prompt_text="Hi"),
             StreamPiece("b", logprobs=LOGPROBS), done]
    encoded = [encode_line(line) for line in lines]
    assert encoded[0] == b'{"text": "a"}\n'
    assert json.loads(encoded[-1])["done"] is True
    assert [decode_line(line.rstrip(b"\n")) for line in encoded] == lines
    assert decode_line(b"") is None and decode_line(b'{"text": ""}') is None


def test_generation_params_leave_neutral_fields_out() -> None:
    params = GenerationParams(context="x", length=2, temperature=1.0, top_k=0, top_p=1.0,
                              max_time=1.0, logit_bias=((5, -100.0),))
    assert params.to_json() == {"context": "x", "length": 2, "temperature": 1.0, "top_k": 0,
                                "top_p": 1.0, "max_time": 1.0,
                                "logit_bias": {"5": -100.0}}
