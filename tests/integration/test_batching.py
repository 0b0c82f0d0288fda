"""A CTranslate2 worker takes the requests already queued when no other worker is idle,
and decodes their samples as one batch (worker_api.gathering, worker_api.rounds): real
gunicorn tiers on the tiny model, the worker held stopped while the requests queue."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from fanout.tools.ports import free_port
from tests.conftest import layout_document
from tests.integration.servers import (
    RunningTiers,
    in_accept,
    paused,
    queued,
    scrape,
    started,
    total,
)

pytestmark = pytest.mark.integration

GREEDY = {"context": "The nation is", "length": 12, "temperature": 0, "stop_at": "none"}


def batching_pool(folder: Path, model: Path, name: str,
                  workers: int) -> AbstractContextManager[RunningTiers]:
    """A front and pool ``name``: ``workers`` CTranslate2 workers, batches of up to 4."""
    document = layout_document(
        model,
        pools={name: {"bind": f"127.0.0.1:{free_port()}", "engine": "ctranslate2",
                      "dtype": None, "quantization": "int8", "batch": 4,
                      "slots": [{"device": "cpu"}] * workers}},
        front={"bind": f"127.0.0.1:{free_port()}"})
    return started(document, folder)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory,
               tiny_model_dir: Path) -> Iterator[RunningTiers]:
    """One worker: no other is ever idle, so whatever queues behind it is its to take."""
    with batching_pool(tmp_path_factory.mktemp("batching"), tiny_model_dir, "one",
                       1) as running:
        yield running


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory,
                tiny_model_dir: Path) -> Iterator[RunningTiers]:
    with batching_pool(tmp_path_factory.mktemp("batching-two"), tiny_model_dir, "two",
                       2) as running:
        yield running


def batch_rows(tiers: RunningTiers) -> tuple[float, float]:
    """The worker's ``fanout_worker_batch_rows`` histogram: completions, and their rows."""
    scraped = scrape(tiers.pool_url("one"))
    return (total(scraped, "fanout_worker_batch_rows_count"),
            total(scraped, "fanout_worker_batch_rows_sum"))


def test_a_tabs_samples_queued_behind_a_busy_worker_decode_as_one_batch(
        one_worker: RunningTiers) -> None:
    tiers = one_worker
    [pid] = tiers.ready_slots("one").values()
    alone = requests.post(f"{tiers.pool_url('one')}/generate", json=GREEDY, timeout=60)
    assert alone.status_code == 200, alone.text
    before = batch_rows(tiers)
    with ThreadPoolExecutor(1) as executor, paused([pid]):
        sent = executor.submit(requests.post, f"{tiers.front_url}/autocomplete", timeout=60,
                               json={**GREEDY, "model_size": "one", "n_samples": 3},
                               headers={"X-Request-ID": "tab-of-three"})
        # All three of the Tab's connections wait in the queue before the worker runs on.
        tiers.wait_until(lambda: queued(tiers.pool_url("one")) == 3,
                         "three connections queued")
    response = sent.result()
    assert response.status_code == 200, response.text
    texts = [sentence["value"] for sentence in response.json()["sentences"]]
    # Greedy: each row of the batch is what the sample decoded alone was.
    assert texts == [alone.json()["text"]] * 3
    lines = tiers.request_lines("pool-one", "tab-of-three", 3)
    assert sorted(line["batch"] for line in lines if line["route"] == "/generate") == [3, 3, 3]
    count, rows = batch_rows(tiers)
    assert (count - before[0], rows - before[1]) == (3, 9)


def test_a_bad_request_taken_with_good_ones_is_refused_and_holds_none_back(
        one_worker: RunningTiers) -> None:
    tiers = one_worker
    [pid] = tiers.ready_slots("one").values()
    url = tiers.pool_url("one")
    address = urlsplit(url)
    broken = b'{"context": "The nation", "length": '
    before = batch_rows(tiers)
    with ThreadPoolExecutor(2) as executor:
        with paused([pid]):
            good = [executor.submit(requests.post, f"{url}/generate", json=GREEDY,
                                    timeout=60) for _ in range(2)]
            tiers.wait_until(lambda: queued(url) == 2, "two connections queued")
            bad = socket.create_connection((address.hostname, address.port), timeout=60)
            bad.sendall(b"POST /generate HTTP/1.1\r\nHost: worker\r\n"
                        b"Content-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n%s" % (len(broken), broken))
            tiers.wait_until(lambda: queued(url) == 3, "three connections queued")
        with bad:
            refusal = bad.makefile("rb").read()  # the worker closes after its answer
        answers = [future.result() for future in good]
    head, _, body = refusal.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), refusal
    assert "JSON" in json.loads(body)["description"]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["tokens"] == 12
    count, rows = batch_rows(tiers)
    assert (count - before[0], rows - before[1]) == (2, 4)


def test_a_worker_leaves_one_queued_connection_for_each_other_idle_worker(
        two_workers: RunningTiers) -> None:
    """A Tab of three queued while both workers are idle: the worker that takes the first
    connection takes one more and leaves the third to the other idle worker. Held
    stopped, that one does not take it; the first takes it once its batch is done."""
    tiers = two_workers
    first, other = tiers.ready_slots("two").values()
    # The other must be stopped idle, in select(): stopped on its way back from the
    # /health just asked, it would still count as busy.
    tiers.wait_until(lambda: in_accept(other), "the other worker back in accept()")
    with ThreadPoolExecutor(1) as executor, paused([other]):
        with paused([first]):  # both idle, stopped: the Tab's three connections queue
            sent = executor.submit(requests.post, f"{tiers.front_url}/autocomplete",
                                   timeout=60, headers={"X-Request-ID": "three-on-two"},
                                   json={**GREEDY, "model_size": "two", "n_samples": 3})
            tiers.wait_until(lambda: queued(tiers.pool_url("two")) == 3,
                             "three connections queued")
        response = sent.result()
    assert response.status_code == 200, response.text
    lines = [line for line in tiers.request_lines("pool-two", "three-on-two", 3)
             if line["route"] == "/generate"]
    assert [line["batch"] for line in lines] == [2, 2, 1]  # in the order they ended
    assert {line["pid"] for line in lines} == {first}
