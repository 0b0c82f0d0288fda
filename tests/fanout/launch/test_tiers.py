"""The Procfile is generated from the layout and must not drift from it."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from fanout.launch.tiers import procfile, tiers
from fanout.layout import DEFAULT_LAYOUT, load_layout
from tests.conftest import LayoutFactory

REPO = Path(__file__).resolve().parents[3]


def test_one_tier_per_pool_then_the_front_then_its_edge(write_layout: LayoutFactory) -> None:
    layout = load_layout(write_layout(pools={
        "small": {"bind": "127.0.0.1:9101", "slots": ["cpu"]},
        "medium": {"bind": "127.0.0.1:9102", "slots": ["cpu"]}},
        edge={"front_bind": "127.0.0.1:9001"}))
    started = tiers(layout, python="python")
    assert [t.name for t in started] == ["pool-small", "pool-medium", "front", "edge"]
    assert started[1].env == {"FANOUT_POOL": "medium"}
    assert started[1].health_url == "http://127.0.0.1:9102/health"
    assert "worker_api.app:get_app()" in started[0].argv
    # The front listens behind the edge; the edge where the front's clients connect.
    assert started[2].health_url == "http://127.0.0.1:9001/health"
    assert started[3].argv == ("python", "-m", "fanout", "edge")
    assert started[3].health_url == f"{layout.front.bind.url}/health"


def test_without_an_edge_the_front_listens_on_its_own_bind(write_layout: LayoutFactory) -> None:
    layout = load_layout(write_layout(edge={"enabled": False}))
    started = tiers(layout, python="python")
    assert [t.name for t in started] == ["pool-small", "front"]
    assert started[1].health_url == f"{layout.front.bind.url}/health"


def test_the_committed_procfile_matches_the_default_layout() -> None:
    expected = procfile(load_layout(DEFAULT_LAYOUT))
    assert (REPO / "Procfile").read_text() == expected
    lines = [line for line in expected.splitlines() if not line.startswith("#")]
    assert [line.split(":", 1)[0] for line in lines] == ["pool-small", "pool-medium", "front",
                                                             "edge"]
    assert all(shlex.split(line.split(":", 1)[1]) for line in lines)
    check = subprocess.run([sys.executable, "-m", "honcho", "check"], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
