"""The worker's in-process tests: models run on one torch thread, as a pool's slots do, so
a busy machine slows them down but cannot set torch's threads spinning against it."""

from __future__ import annotations

import pytest

from worker_api.model import set_cpu_threads


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    set_cpu_threads(1)
