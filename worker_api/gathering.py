"""The worker tier's gunicorn worker: sync, taking the requests already waiting together.

An idle worker blocks in accept() and takes one connection, exactly as gunicorn's sync
worker does, so the fan-out still spreads over idle workers (gunicorn_conf). What it adds:
when it takes a connection, it also takes, without waiting, the connections already
queued on the listener past one for each other idle worker, up to the pool's ``batch``:
no idle worker is left for them (a Tab of three reaching two idle workers at once: one
takes two). Served as one round (``worker_api.rounds``), their samples decode as one
batch instead of one after another. Whether the others are idle it reads from an
``IdleBoard``, one byte per slot in memory the master shares with every worker it forks.

Imported by the master (gunicorn_conf names the class): gunicorn and the standard
library only.
"""

from __future__ import annotations

import errno
import mmap
import os
import socket
import struct
from functools import partial

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from worker_api.rounds import run_together
from worker_api.slots import SLOT_ENV

# accept() on the non-blocking listener when nothing more is queued.
_NOTHING_QUEUED = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED)
# struct tcp_info (linux/tcp.h): eight one-byte fields, then u32s rto, ato, snd_mss,
# rcv_mss, unacked, ...
_TCPI_UNACKED = 24
_TCP_INFO_BYTES = 104


class IdleBoard:
    """Which of a pool's workers serve no request (they wait in accept(), or are still
    loading): one byte per slot, in an anonymous shared mapping the master makes before
    it forks, so every worker sees the others'. A worker that dies idle leaves its byte
    set until its successor takes a connection: meanwhile the others leave one queued
    connection out of their batches, as for any idle worker; it waits for the first
    worker to come back to accept()."""

    def __init__(self, slots: int) -> None:
        self.flags = mmap.mmap(-1, slots)

    def mark(self, slot: int, idle: bool) -> None:
        self.flags[slot] = idle

    def others_idle(self, slot: int) -> int:
        """How many workers other than ``slot``'s are idle."""
        return self.flags[:].count(1) - self.flags[slot]


class GatheringWorker(SyncWorker):
    batch: int  # both set by ``gathering_worker``
    board: IdleBoard
    slot = 0

    def init_process(self) -> None:
        # Idle from the start, while the model loads: a connection left queued for it is
        # one it takes once ready, so the others do not take it meanwhile.
        self.slot = int(os.environ[SLOT_ENV])  # post_fork set it
        self.board.mark(self.slot, True)
        super().init_process()

    def accept(self, listener: socket.socket) -> None:
        try:
            first = listener.accept()
        except OSError:  # nothing queued (EAGAIN): this worker goes to wait in select()
            self.board.mark(self.slot, True)
            raise
        self.board.mark(self.slot, False)
        taken = [first]
        more = self.batch - 1
        if idle := self.board.others_idle(self.slot):
            # One queued connection for each idle worker; only those past them are ours.
            more = min(more, max(0, queued(listener) - idle))
        while len(taken) < 1 + more:
            try:
                taken.append(listener.accept())
            except OSError as error:
                if error.errno not in _NOTHING_QUEUED:
                    raise
                break
        for client, _ in taken:
            client.setblocking(True)
            util.close_on_exec(client)
        if len(taken) == 1:
            self.handle(listener, *taken[0])
        else:  # handle() answers every failure itself
            run_together([partial(self.handle, listener, client, address)
                          for client, address in taken])


def queued(listener: socket.socket) -> int:
    """Connections waiting in ``listener``'s accept queue: for a listening TCP socket,
    Linux reports it as ``tcpi_unacked`` of TCP_INFO. 0 where it cannot be read (a Unix
    socket): then a worker takes more only while no other is idle."""
    try:
        info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    except (OSError, AttributeError):
        return 0
    return int(struct.unpack_from("I", info, _TCPI_UNACKED)[0])


def gathering_worker(batch: int, board: IdleBoard) -> type[GatheringWorker]:
    """The worker class for a pool whose workers take up to ``batch`` requests at once;
    ``board`` is shared by the pool's workers (make it before they fork)."""
    return type("GatheringWorker", (GatheringWorker,), {"batch": batch, "board": board})
