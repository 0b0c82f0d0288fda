"""Fixtures shared by the front's unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.frontend_api.test_fanout import WorkerTier


@pytest.fixture
def tier() -> Iterator[WorkerTier]:
    """A stand-in worker tier on a free loopback port, answering as its ``behaviour`` says."""
    running = WorkerTier()
    yield running
    running.close()
