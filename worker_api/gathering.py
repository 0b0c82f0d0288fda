"""The worker tier's gunicorn worker: sync, taking the requests already waiting together.

An idle worker blocks in accept() and takes one connection, exactly as gunicorn's sync
worker does, so the fan-out still spreads over idle workers (gunicorn_conf). What it adds:
right after that accept it takes, without waiting, any further connections already
queued on the listener, up to the pool's ``batch``. Those had found no idle worker;
served as one round (``worker_api.rounds``), their samples decode as one batch instead of
waiting for one another. With nothing queued it serves the one connection as before.

Imported by the master (gunicorn_conf names the class): gunicorn and the standard
library only.
"""

from __future__ import annotations

import errno
import socket
import threading
from typing import Any

from gunicorn import util
from gunicorn.workers.sync import SyncWorker

from worker_api.rounds import Round, serving

# accept() on the non-blocking listener when nothing more is queued.
_NOTHING_QUEUED = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNABORTED)


class GatheringWorker(SyncWorker):
    batch = 1  # set by ``gathering_worker``

    def accept(self, listener: socket.socket) -> None:
        taken = [listener.accept()]
        while len(taken) < self.batch:
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
            return
        together = Round(len(taken))
        threads = [threading.Thread(target=self._serve, args=(together, listener, *pair),
                                    name=f"round-{index}")
                   for index, pair in enumerate(taken)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _serve(self, together: Round, listener: socket.socket, client: socket.socket,
               address: Any) -> None:
        with serving(together):
            self.handle(listener, client, address)


def gathering_worker(batch: int) -> type[GatheringWorker]:
    """The worker class for a pool whose workers take up to ``batch`` requests at once."""
    return type("GatheringWorker", (GatheringWorker,), {"batch": batch})
