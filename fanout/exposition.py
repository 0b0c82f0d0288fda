"""``GET /metrics`` for both tiers: a registry in Prometheus' text format."""

from __future__ import annotations

import falcon
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest


class MetricsPage:
    """Serves ``registry`` as it is at each scrape."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # The classic text format, which every Prometheus (and most other scrapers) reads.
        resp.content_type = CONTENT_TYPE_PLAIN_0_0_4
        resp.data = generate_latest(self.registry)
