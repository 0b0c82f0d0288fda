"""What a gathering worker reads before it takes more than one connection: the idle
board the pool's workers share, and its listener's accept queue."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from worker_api.gathering import IdleBoard, queued


def test_a_mark_made_in_a_forked_worker_is_seen_by_the_others() -> None:
    board = IdleBoard(3)  # made by the master, before it forks
    child = os.fork()
    if child == 0:  # a worker in slot 1 goes to wait in accept()
        board.mark(1, True)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert status == 0
    assert board.others_idle(0) == board.others_idle(2) == 1
    assert board.others_idle(1) == 0  # its own mark is not another's
    board.mark(1, False)  # it took a connection
    assert [board.others_idle(slot) for slot in range(3)] == [0, 0, 0]


def test_queued_reads_the_listeners_accept_queue() -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=16) as listener:
        address = listener.getsockname()
        assert queued(listener) == 0
        clients = [socket.create_connection(address) for _ in range(3)]
        try:
            # On loopback the handshake completes within connect(): all three queue.
            assert queued(listener) == 3
            accepted, _ = listener.accept()
            accepted.close()
            assert queued(listener) == 2
        finally:
            for client in clients:
                client.close()


def test_queued_is_zero_where_it_cannot_be_read(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "socket"))
        listener.listen()
        assert queued(listener) == 0
