"""Which worker holds which slot, and which slots are warmed up and serving.

The gunicorn master assigns slots (``pre_fork``) and frees them (``child_exit``); each
worker marks its slot ready once its model is warm. The record is one small file per
ready slot in a directory the master owns, so any worker can report on the whole pool
without talking to its siblings. The master tells each worker its pool, its slot and
these directories through the environment variables named here.

Torch-free and free of prometheus_client: the master imports this module, and
prometheus_client must first be imported after the master has set its metrics directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fanout.layout import POOL_ENV, Layout, Pool

STATE_DIR_ENV = "FANOUT_STATE_DIR"
SLOT_ENV = "FANOUT_SLOT"
# "1" when the worker takes a slot an earlier worker held (that one died or was killed).
RESTARTED_ENV = "FANOUT_SLOT_RESTARTED"
# prometheus_client's own variable: where each worker writes its metrics.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def pool_from_env(layout: Layout) -> Pool:
    """The pool this server serves: ``$FANOUT_POOL``, else the layout's first."""
    name = os.environ.get(POOL_ENV) or layout.default_pool.name
    if name not in layout.pools:
        raise SystemExit(f"{layout.source}: ${POOL_ENV}={name!r} names no pool "
                         f"(pools: {', '.join(layout.pools)})")
    return layout.pools[name]


def lowest_free_slot(total: int, taken: Iterable[int | None]) -> int:
    """The slot a new worker gets: a respawned worker fills the hole its predecessor left."""
    used = set(taken)
    for slot in range(total):
        if slot not in used:
            return slot
    raise RuntimeError(f"all {total} slots are taken; gunicorn spawned more workers than slots")


class SlotBoard:
    """Ready-slot records under ``directory``: ``slot-N.json`` holding the worker's pid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, slot: int) -> Path:
        return self.directory / f"slot-{slot}.json"

    def mark_ready(self, slot: int, pid: int, device: str) -> None:
        temporary = self.directory / f".slot-{slot}.{pid}.tmp"
        temporary.write_text(json.dumps({"slot": slot, "pid": pid, "device": device}))
        temporary.replace(self._path(slot))  # atomic: readers never see half a record

    def clear(self, slot: int, pid: int) -> None:
        """Forget ``slot`` if ``pid`` still holds it (a successor may already have claimed it)."""
        record = self._read(self._path(slot))
        if record is not None and record.get("pid") == pid:
            self._path(slot).unlink(missing_ok=True)

    def ready(self) -> dict[int, dict[str, Any]]:
        records = (self._read(p) for p in sorted(self.directory.glob("slot-*.json")))
        return {int(r["slot"]): r for r in records if r is not None and _alive(int(r["pid"]))}

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None


def _alive(pid: int) -> bool:
    # A worker killed with SIGKILL cannot clear its record; the master's child_exit does,
    # but between the two the pid check keeps a dead worker from being reported ready.
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
