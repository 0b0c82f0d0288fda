"""The front's errors about its worker tier, drawn once::

    Exception
     ├── WorkerTierError   the request fails; ``status`` is what the front answers
     │                     (4xx: the worker refused the client's parameters; 502: a worker
     │                     failed; 503: the pool is down, with Retry-After; 504: too slow).
     │                     The app maps it to an HTTP error once (frontend_api.app).
     ├── ClientGone        the client left before its samples were in (499 in the log)
     ├── WorkerDropped     a worker broke its connection mid-request (it died, or answered
     │                     5xx): the sample is sent again while the deadline allows
     └── HostUnreachable   no connection to a host (refused, unreachable, timed out):
                           the pool's next host is tried, and none left is a 503

The transport (frontend_api.transport) raises them; the fan-out (frontend_api.fanout)
turns the last two into a retry, another host or a WorkerTierError, so handlers only
ever see the first two.
"""

from __future__ import annotations

# A refused connection means the pool's server is down; it is back in a few seconds
# when a supervisor restarts it, minutes if it must reload its model.
POOL_DOWN_RETRY_AFTER = 5


class WorkerTierError(Exception):
    """A pool's worker tier failed a request; carries the status the front should answer."""

    def __init__(self, status: int, title: str, description: str, field: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status, self.title, self.description = status, title, description
        self.field, self.retry_after = field, retry_after

    @property
    def ends_request(self) -> bool:
        """Fails the whole request, not one sample: every sample would fail alike."""
        return 400 <= self.status < 500 or self.status == 503


class ClientGone(Exception):
    """The client closed its connection before its samples were in."""


class WorkerDropped(Exception):
    """The worker's connection broke mid-request (the worker died): worth sending again."""


class HostUnreachable(Exception):
    """No connection to a host (refused, unreachable, timed out): try the pool's next."""
