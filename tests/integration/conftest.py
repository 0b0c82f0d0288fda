"""Both tiers as real gunicorn processes on free loopback ports, one set per module, and
a headless Chromium for the editor's tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser

from fanout.tools.ports import free_port
from tests.conftest import layout_document
from tests.integration.browser import chromium
from tests.integration.paced_worker import PACED_APP, Gates
from tests.integration.servers import RunningTiers, started


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningTiers]:
    """Pool ``small`` (3 single-threaded CPU workers, also named ``gpt2/medium``) and a
    front; pool ``ghost`` (``gpt2/ghost``) is in the layout but never started, to show how
    the front answers for a dead pool."""
    folder = tmp_path_factory.mktemp("tiers")
    document = layout_document(
        tiny_model_dir,
        pools={"small": {"bind": f"127.0.0.1:{free_port()}",
                         "slots": [{"device": "cpu", "threads": 1}] * 3,
                         # The path Write With Transformer's clients post to.
                         "aliases": ["gpt2/medium"]},
               "ghost": {"bind": f"127.0.0.1:{free_port()}", "slots": ["cpu"],
                         "aliases": ["gpt2/ghost"]}},
        front={"bind": f"127.0.0.1:{free_port()}", "network_slack": 2.0,
               "max_body_bytes": 4096},
        # A sample ends by its length, never by the clock, unless a test asks for less.
        generation={"defaults": {"max_time": 20.0},
                    "limits": {"length": 300, "max_time": 20.0, "context_bytes": 2048}},
    )
    with started(document, folder, {"small"}, only={"pool-small", "front"}) as running:
        yield running


SAMPLES = 3  # the paced pool's workers


@dataclass
class Paced:
    tiers: RunningTiers
    gates: Gates


@pytest.fixture
def paced(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Paced]:
    """A front and a paced pool ``small`` of three workers; nothing is written until the
    test opens a gate, and a sample may wait up to a minute for one."""
    gates = Gates(tmp_path / "gates")
    document = layout_document(
        tiny_model_dir,
        pools={"small": {"bind": f"127.0.0.1:{free_port()}", "worker_timeout": 120,
                         "slots": [{"device": "cpu", "threads": 1}] * SAMPLES}},
        front={"bind": f"127.0.0.1:{free_port()}"},
        generation={"defaults": {"max_time": 60.0}, "limits": {"max_time": 60.0}})
    with started(document, tmp_path, env=gates.env, apps={"pool-small": PACED_APP}) as running:
        yield Paced(running, gates)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched
