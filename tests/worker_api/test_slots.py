"""Slot assignment and the ready-slot board the gunicorn hooks rely on."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from worker_api.slots import SlotBoard, lowest_free_slot


def test_a_new_worker_takes_the_lowest_free_slot() -> None:
    assert lowest_free_slot(3, []) == 0
    assert lowest_free_slot(3, [0, 2]) == 1  # the respawn fills the dead worker's hole
    assert lowest_free_slot(3, [None, 0]) == 1
    with pytest.raises(RuntimeError, match="all 2 slots are taken"):
        lowest_free_slot(2, [0, 1])


def test_the_board_reports_live_ready_workers(tmp_path: Path) -> None:
    board = SlotBoard(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    board.mark_ready(0, os.getpid(), "cpu")
    board.mark_ready(1, dead.pid, "cuda:1")

    assert list(board.ready()) == [0]  # slot 1's worker is gone
    assert board.ready()[0] == {"slot": 0, "pid": os.getpid(), "device": "cpu"}


def test_clearing_a_slot_spares_its_successor(tmp_path: Path) -> None:
    board = SlotBoard(tmp_path)
    board.mark_ready(0, os.getpid(), "cpu")
    board.clear(0, pid=12345)  # a stale exit must not erase the live record
    assert 0 in board.ready()
    board.clear(0, pid=os.getpid())
    assert board.ready() == {}
