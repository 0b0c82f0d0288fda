"""One pool on two "hosts" (network namespaces with their own addresses) behind one front.

The worker tier runs in each namespace exactly as it would on its own machine (binding
0.0.0.0:8101 in both); the front, in the test's own namespace, reaches them through the
layout's ``pools.small.hosts``. Shows the fan-out spreading over both hosts, the loss of
one (its link cut mid-service) costing no sample, and its return.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from fanout.launch.tiers import tiers
from fanout.layout import LAYOUT_ENV, load_layout
from fanout.tools.ports import free_port
from tests.conftest import layout_document
from tests.integration.netns import NetnsHost, why_no_namespaces
from tests.integration.servers import (
    READY_SECONDS,
    RunningTiers,
    paused,
    ready_slots,
    scrape,
    total,
)

POOL_PORT = 8101  # the same on both hosts: each namespace has its own ports
WORKERS_PER_HOST = 2

_missing = why_no_namespaces()
pytestmark = pytest.mark.skipif(_missing is not None,
                                reason=f"cannot make network namespaces: {_missing}")


@dataclass
class TwoHosts:
    front: RunningTiers
    hosts: list[NetnsHost]
    tiers: list[subprocess.Popen[bytes]]

    @property
    def urls(self) -> list[str]:
        return [f"http://{host.address}:{POOL_PORT}" for host in self.hosts]

    def autocomplete(self, n_samples: int) -> dict[str, Any]:
        response = requests.post(f"{self.front.front_url}/autocomplete", timeout=30, json={
            "context": "The nation", "n_samples": n_samples, "length": 8, "max_time": 3.0})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def samples_sent(self, host_url: str) -> float:
        """How many samples the front has sent to ``host_url`` so far (every try)."""
        return total(scrape(self.front.front_url), "fanout_front_host_samples_total",
                     host=host_url, pool="small")

    def autocomplete_held(self, n_samples: int) -> dict[str, Any]:
        """``autocomplete`` with every worker paused until the front has sent all the
        samples: none ends early, so each host's count of outstanding samples only grows
        while the front chooses, as it does when the samples are long."""
        workers = [pid for url in self.urls for pid in ready_slots(url).values()]
        sent_before = sum(self.samples_sent(url) for url in self.urls)
        with ThreadPoolExecutor(1) as executor, paused(workers):
            answer = executor.submit(self.autocomplete, n_samples)
            self.front.wait_until(lambda: sum(self.samples_sent(url) for url in self.urls)
                                  >= sent_before + n_samples, "every sample sent")
        return answer.result()

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = requests.get(f"{self.front.front_url}/health", timeout=10).json()
        return body["pools"]["small"]


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
              ) -> Iterator[TwoHosts]:
    folder = tmp_path_factory.mktemp("multihost")
    hosts: list[NetnsHost] = []
    started: list[subprocess.Popen[bytes]] = []
    front: RunningTiers | None = None
    try:
        hosts = [NetnsHost(1), NetnsHost(2)]
        document = layout_document(
            tiny_model_dir,
            pools={"small": {"bind": f"0.0.0.0:{POOL_PORT}",
                             "hosts": [f"{h.address}:{POOL_PORT}" for h in hosts],
                             "slots": [{"device": "cpu", "threads": 1}] * WORKERS_PER_HOST}},
            front={"bind": f"127.0.0.1:{free_port()}", "host_check_seconds": 0.2},
        )
        path = folder / "gpu_layout.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        pool_tier = next(t for t in tiers(load_layout(path)) if t.name == "pool-small")
        env = {**os.environ, LAYOUT_ENV: str(path), "FANOUT_LOG_LEVEL": "info", **pool_tier.env}
        started = [host.start(pool_tier.argv, env, folder / f"{host.name}.log")
                   for host in hosts]
        front = RunningTiers(path, folder, only={"front"})
        running = TwoHosts(front, hosts, started)
        deadline = time.monotonic() + READY_SECONDS
        while not all(len(ready_slots(url)) == WORKERS_PER_HOST for url in running.urls):
            assert time.monotonic() < deadline, "the worker tiers did not get ready"
            assert all(p.poll() is None for p in started), "a worker tier exited"
            time.sleep(0.2)
        front.wait_ready(set())
        yield running
    finally:
        for process in started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            process.wait(timeout=30)
        if front is not None:
            front.stop()
        for host in hosts:
            host.remove()


def test_the_front_fans_out_across_both_hosts(two_hosts: TwoHosts) -> None:
    health = two_hosts.health()
    assert (health["status"], health["workers"], health["ready_workers"]) == ("ok", 4, 4)
    assert [h["url"] for h in health["hosts"]] == two_hosts.urls

    body = two_hosts.autocomplete_held(n_samples=4)

    # Fewest outstanding first: a request's four samples go two to each host.
    hosts = [sample["worker"]["host"] for sample in body["sentences"]]
    assert sorted(hosts) == sorted(two_hosts.urls * 2)


def test_the_loss_of_a_host_costs_no_sample_and_it_comes_back(two_hosts: TwoHosts) -> None:
    lost, kept = two_hosts.hosts[0], two_hosts.urls[1]
    lost_url = two_hosts.urls[0]
    lost.cut()
    try:
        body = two_hosts.autocomplete(n_samples=4)
        # Every sample arrived, from the host still there; none is reported missing.
        assert not body.get("partial") and len(body["sentences"]) == 4
        assert {s["worker"]["host"] for s in body["sentences"]} == {kept}

        health = two_hosts.health()
        assert health["status"] == "degraded"
        assert [(h["url"], h["in_service"]) for h in health["hosts"]] == [
            (lost_url, False), (kept, True)]
        metrics = requests.get(f"{two_hosts.front.front_url}/metrics", timeout=10).text
        assert f'fanout_front_host_up{{host="{lost_url}",pool="small"}} 0.0' in metrics

        # Held out of service: the next requests go straight to the other host, without
        # trying the lost one first.
        tried = two_hosts.samples_sent(lost_url)
        assert tried > 0
        body = two_hosts.autocomplete(n_samples=2)
        assert {s["worker"]["host"] for s in body["sentences"]} == {kept}
        assert two_hosts.samples_sent(lost_url) == tried
    finally:
        lost.mend()

    deadline = time.monotonic() + 20
    while not all(h["in_service"] for h in two_hosts.health()["hosts"]):
        assert time.monotonic() < deadline, "the mended host stayed out of service"
        time.sleep(0.2)
    body = two_hosts.autocomplete_held(n_samples=4)
    assert sorted(s["worker"]["host"] for s in body["sentences"]) == sorted(two_hosts.urls * 2)


def test_a_host_whose_worker_tier_dies_is_skipped(two_hosts: TwoHosts) -> None:
    victim = two_hosts.tiers[1]
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    body = two_hosts.autocomplete(n_samples=4)
    assert not body.get("partial") and len(body["sentences"]) == 4
    assert {s["worker"]["host"] for s in body["sentences"]} == {two_hosts.urls[0]}
    assert two_hosts.health()["hosts"][1]["in_service"] is False
