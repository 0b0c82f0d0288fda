"""The idle board a pool's workers share: each sees whether another waits in accept()."""

from __future__ import annotations

import os

from worker_api.gathering import IdleBoard


def test_a_mark_made_in_a_forked_worker_is_seen_by_the_others() -> None:
    board = IdleBoard(3)  # made by the master, before it forks
    child = os.fork()
    if child == 0:  # a worker in slot 1 goes to wait in accept()
        board.mark(1, True)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert status == 0
    assert board.others_idle(0) and board.others_idle(2)
    assert not board.others_idle(1)  # its own mark is not another's
    board.mark(1, False)  # it took a connection
    assert not any(board.others_idle(slot) for slot in range(3))
