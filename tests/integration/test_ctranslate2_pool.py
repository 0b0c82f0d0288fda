"""A CTranslate2 pool as real gunicorn processes: converted once by the master before it
forks, lean workers (no torch), pinned cores, and the same API as a transformers pool,
seen through curl-like requests and OpenAI's own client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests

from fanout.convert import CACHE_ENV, MANIFEST
from fanout.tools.ports import free_port
from tests.conftest import layout_document
from tests.integration.servers import RunningTiers, started

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ct2(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningTiers]:
    folder = tmp_path_factory.mktemp("ct2")
    document = layout_document(
        tiny_model_dir,
        pools={"fast": {"bind": f"127.0.0.1:{free_port()}", "engine": "ctranslate2",
                        "dtype": None, "quantization": "int8",
                        "slots": [{"device": "cpu", "cpus": [0]}, {"device": "cpu"}]}},
        front={"bind": f"127.0.0.1:{free_port()}"})
    # A cache of its own, empty: the pool's master must convert before its workers fork.
    with started(document, folder, env={CACHE_ENV: str(folder / "cache")}) as running:
        yield running


def autocomplete(tiers: RunningTiers, **body: object) -> dict:
    answer = requests.post(f"{tiers.front_url}/autocomplete", timeout=60,
                           json={"model_size": "fast", "context": "The nation", **body})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_master_converted_once_before_the_workers_loaded_it(ct2: RunningTiers) -> None:
    cache = Path(ct2.env[CACHE_ENV]) / "ctranslate2"
    [converted] = [p for p in cache.iterdir() if (p / MANIFEST).is_file()]
    for pid in ct2.ready_slots("fast").values():
        info = requests.get(f"{ct2.pool_url('fast')}/info", timeout=10).json()
        assert info["engine"] == "ctranslate2" and info["quantization"] == "int8"
        assert info["converted"] == str(converted)
        maps = Path(f"/proc/{pid}/maps").read_text()
        # The lean worker: CTranslate2 is loaded, torch never is, numpy not before a
        # request needs it (logprobs, penalties, a bias).
        assert "libctranslate2" in maps and "libtorch" not in maps
        assert "_multiarray_umath" not in maps


def test_a_slot_with_cores_runs_pinned_to_them(ct2: RunningTiers) -> None:
    pinned = ct2.ready_slots("fast")["0"]
    status = Path(f"/proc/{pinned}/status").read_text()
    assert "Cpus_allowed_list:\t0\n" in status


def test_the_fanout_answers_from_every_worker(ct2: RunningTiers) -> None:
    body = autocomplete(ct2, n_samples=2, length=12)
    assert {s["worker"]["slot"] for s in body["sentences"]} == {0, 1}
    # Unseeded CTranslate2 samples cannot be replayed, and say so.
    assert [s["seed"] for s in body["sentences"]] == [None, None]
    assert len({s["value"] for s in body["sentences"]}) == 2


def test_a_seeded_request_is_repeatable(ct2: RunningTiers) -> None:
    first = autocomplete(ct2, n_samples=2, length=12, seed=11)
    again = autocomplete(ct2, n_samples=2, length=12, seed=11)
    assert [s["seed"] for s in first["sentences"]] == [11, 12]
    assert [s["value"] for s in first["sentences"]] == [s["value"] for s in again["sentences"]]


def test_min_tokens_and_stream_through_openais_client(ct2: RunningTiers) -> None:
    with openai.OpenAI(base_url=f"{ct2.front_url}/v1", api_key="unused", max_retries=0,
                       timeout=60) as client:
        whole = client.completions.create(model="fast", prompt="The nation", max_tokens=10,
                                          seed=5, extra_body={"min_tokens": 10})
        assert whole.usage is not None and whole.usage.completion_tokens == 10
        with client.completions.create(model="fast", prompt="The nation", max_tokens=10,
                                       seed=5, stream=True,
                                       extra_body={"min_tokens": 10}) as pieces:
            streamed = "".join(chunk.choices[0].text for chunk in pieces)
        assert streamed == whole.choices[0].text
        with pytest.raises(openai.BadRequestError, match="min_tokens"):
            client.completions.create(model="fast", prompt="x", max_tokens=3,
                                      extra_body={"min_tokens": 4})


def test_openais_extras_on_a_ctranslate2_pool(ct2: RunningTiers) -> None:
    """What CTranslate2 has no hook for (a bias that is no ban, penalties, log-probabilities
    as a stream goes) its workers do themselves; through OpenAI's client it looks the same."""
    with openai.OpenAI(base_url=f"{ct2.front_url}/v1", api_key="unused", max_retries=0,
                       timeout=60) as client:
        scored = client.completions.create(model="fast", prompt="The nation was",
                                           max_tokens=0, echo=True, logprobs=2)
        [choice] = scored.choices
        assert choice.logprobs is not None and choice.text == "The nation was"
        assert "".join(choice.logprobs.tokens or []) == choice.text
        figures = choice.logprobs.token_logprobs or []
        assert figures[0] is None and all(f is not None and f <= 0 for f in figures[1:])

        forced = dict(model="fast", prompt="The nation", max_tokens=4, seed=3, logprobs=1,
                      logit_bias={"11": 100})  # GPT-2's token 11 is ","
        whole = client.completions.create(**forced)
        assert whole.choices[0].text == ",,,,"
        with client.completions.create(**forced, stream=True) as chunks:
            tokens = [token for chunk in chunks for part in chunk.choices
                      if part.logprobs is not None for token in part.logprobs.tokens or []]
        assert tokens == [","] * 4

        greedy = dict(model="fast", prompt="The nation", max_tokens=12, temperature=0,
                      logprobs=0)
        plain = client.completions.create(**greedy)
        penalised = client.completions.create(**greedy, presence_penalty=2,
                                              frequency_penalty=2)
        # The tiny model repeats one token greedily; penalised, it may not repeat any.
        distinct = [len(set(answer.choices[0].logprobs.tokens))
                    for answer in (plain, penalised)]
        assert distinct[1] > distinct[0]
