"""Both tiers as real gunicorn processes on free loopback ports, one set per module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from fanout.ports import free_port
from tests.conftest import layout_document
from tests.integration.servers import RunningTiers


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningTiers]:
    """Pool ``small`` (3 single-threaded CPU workers) and a front; pool ``ghost`` is
    in the layout but never started, to show how the front answers for a dead pool."""
    folder = tmp_path_factory.mktemp("tiers")
    document = layout_document(
        tiny_model_dir,
        pools={"small": {"bind": f"127.0.0.1:{free_port()}",
                         "slots": [{"device": "cpu", "threads": 1}] * 3},
               "ghost": {"bind": f"127.0.0.1:{free_port()}", "slots": ["cpu"]}},
        front={"bind": f"127.0.0.1:{free_port()}", "network_slack": 2.0,
               "max_body_bytes": 4096},
        generation={"limits": {"length": 300, "max_time": 10.0, "context_bytes": 2048}},
    )
    path = folder / "gpu_layout.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    running = RunningTiers(path, folder, only={"pool-small", "front"})
    try:
        running.wait_ready({"small"})
        yield running
    finally:
        running.stop()
