"""``fanout fetch`` fails fast, with a message, where the hub cannot be reached."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

FETCH = (sys.executable, "-m", "fanout", "fetch")


def run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FETCH, "gpt2", "--dest", str(tmp_path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_offline_mode_refuses_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run(tmp_path, HF_HUB_OFFLINE="1")
    assert result.returncode == 2
    assert "HF_HUB_OFFLINE is set" in result.stderr
    assert time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_hub_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    # An endpoint on a closed loopback port stands for a host with no route to the hub.
    result = run(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT="http://127.0.0.1:9")
    assert result.returncode == 2
    assert "cannot reach the hub to fetch 'gpt2'" in result.stderr
    assert "Traceback" not in result.stderr
