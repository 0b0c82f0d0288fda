"""``POST /events``: what writers do with suggestions (its body's schema beside it).

The editor reports each list it shows, the rank of the suggestion a writer accepts, and a
list dismissed; the front only counts them (``frontend_api.metrics``: by pool, and by
rank), so an operator can tell whether ``n_samples`` and a bigger model are worth their
cost. Nothing of the text is sent or kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import falcon

from fanout.http import read_json
from fanout.layout import Layout, pool_name
from fanout.params import Fields, ParamError
from frontend_api.metrics import SUGGESTIONS_ACCEPTED, SUGGESTIONS_DISMISSED, SUGGESTIONS_SHOWN

EVENTS = ("shown", "accepted", "dismissed")
EVENT_FIELDS = frozenset({"event", "model_size", "n", "rank"})
# Each event's own field: a list shown has a size, an acceptance a rank, a dismissal none.
_OWN_FIELD = {"shown": "n", "accepted": "rank", "dismissed": None}
MAX_BODY_BYTES = 1024  # an event is a few dozen bytes


@dataclass(frozen=True)
class SuggestionEvent:
    event: str
    pool: str
    n: int | None = None  # shown: how many suggestions the list showed
    rank: int | None = None  # accepted: 0-based, in the list as it was first shown


def parse_event(body: Any, pools: Mapping[str, object], max_samples: int) -> SuggestionEvent:
    """Check an event body; ``pools`` maps every name a request may use (``Layout.names``).
    A field another event carries is refused, naming it, rather than ignored."""
    fields = Fields(body, EVENT_FIELDS)
    event = fields.string("event")
    if event not in EVENTS:
        raise ParamError("event", f"{event!r} is not one of {', '.join(EVENTS)}")
    pool = pool_name(pools, fields.string("model_size", default=next(iter(pools))))
    if pool not in pools:
        raise ParamError("model_size", f"unknown model {pool!r}; "
                                       f"choose one of {', '.join(pools)}", status=404)
    own = _OWN_FIELD[event]
    for name in ("n", "rank"):
        if name != own and fields.body.get(name) is not None:
            raise ParamError(name, f"a {event!r} event carries no {name}")
    if event == "shown":
        return SuggestionEvent(event, pool, n=_required(fields, "n", 1, max_samples))
    if event == "accepted":
        return SuggestionEvent(event, pool, rank=_required(fields, "rank", 0, max_samples - 1))
    return SuggestionEvent(event, pool)


def _required(fields: Fields, name: str, low: int, high: int) -> int:
    value = fields.optional_integer(name, low, high)
    if value is None:
        raise ParamError(name, f"is required ({low}..{high})")
    return value


def count(event: SuggestionEvent) -> None:
    """Move the counters: a list of n adds one shown suggestion at each rank 0..n-1, so
    ``rank="0"`` counts lists and ``accepted / shown`` at a rank is that rank's rate."""
    if event.n is not None:
        for rank in range(event.n):
            SUGGESTIONS_SHOWN.labels(event.pool, str(rank)).inc()
    elif event.rank is not None:
        SUGGESTIONS_ACCEPTED.labels(event.pool, str(event.rank)).inc()
    else:
        SUGGESTIONS_DISMISSED.labels(event.pool).inc()


def zero_counters(layout: Layout) -> None:
    """Every pool's series at 0 from the start (at most pools x front.max_samples each), so
    that a rank nobody took reads 0 rather than missing, and rates hold from the first."""
    for pool in layout.pools:
        SUGGESTIONS_DISMISSED.labels(pool)
        for rank in range(layout.front.max_samples):
            SUGGESTIONS_SHOWN.labels(pool, str(rank))
            SUGGESTIONS_ACCEPTED.labels(pool, str(rank))


class Events:
    """``POST /events``: one event, counted; 204 with no body."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        zero_counters(layout)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = read_json(req, min(MAX_BODY_BYTES, self.layout.front.max_body_bytes))
        count(parse_event(body, self.layout.names, self.layout.front.max_samples))
        resp.status = falcon.HTTP_204
