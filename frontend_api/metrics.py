"""The front's Prometheus metrics, and the middleware that records them for every request.

The front is one process, so its metrics live in prometheus_client's default registry,
next to the process_* and python_* metrics that registry brings; ``GET /metrics`` serves
it. Admission (rejections) and the fan-out client (samples, failures, retries) record
the rest where they happen.
"""

from __future__ import annotations

import falcon
from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from fanout.exposition import MetricsPage
from fanout.observe import RequestObserver, RequestRecord, method_label
from frontend_api.forwarded import client_address

# From a request refused at once to one that waits out a long generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0,
                   20.0, 30.0)
SAMPLE_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 64)

REQUESTS = Counter("fanout_front_requests", "HTTP requests answered, by route template, "
                   "method and status", ["route", "method", "status"])
LATENCY = Histogram("fanout_front_request_duration_seconds", "Time to answer a request, "
                    "by route template", ["route"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("fanout_front_requests_in_flight", "Requests being served now")
SAMPLES = Histogram("fanout_front_samples_per_request", "Samples (n_samples) of each "
                    "request fanned out, by pool", ["pool"], buckets=SAMPLE_BUCKETS)
REJECTIONS = Counter("fanout_front_rejections", "Requests refused with 503 by admission, by "
                     "pool and the bound they hit (inflight, queued)", ["pool", "bound"])
SAMPLE_FAILURES = Counter("fanout_front_sample_failures", "Samples that did not arrive, by "
                          "pool and status (502 worker failed, 504 deadline)",
                          ["pool", "status"])
HOST_UP = Gauge("fanout_front_host_up", "Whether the front sends samples to a pool's host "
                "(1) or holds it out of service after a failed connection (0)",
                ["pool", "host"])
HOST_SAMPLES = Counter("fanout_front_host_samples", "Samples sent to each of a pool's hosts "
                       "(every try, retries included): how the fan-out spreads over them",
                       ["pool", "host"])
SAMPLE_RETRIES = Counter("fanout_front_sample_retries", "Samples sent again because their "
                         "worker dropped the connection, by pool", ["pool"])
SAMPLE_RESAMPLES = Counter("fanout_front_sample_resamples", "Samples sent again because "
                           "they repeated another of their request (distinct), by pool",
                           ["pool"])
# What writers do with suggestions (POST /events, frontend_api.events). rank < front.max_samples
# and pool is a layout pool's own name (never an alias), so the label values stay bounded.
SUGGESTIONS_SHOWN = Counter("fanout_suggestions_shown", "Suggestions shown to a writer, by "
                            "pool and rank in the list (a list of n counts once at each rank "
                            "0..n-1, so rank 0 counts lists)", ["pool", "rank"])
SUGGESTIONS_ACCEPTED = Counter("fanout_suggestions_accepted", "Suggestions a writer took, by "
                               "pool and rank (0-based, in the list as first shown)",
                               ["pool", "rank"])
SUGGESTIONS_DISMISSED = Counter("fanout_suggestions_dismissed", "Lists a writer closed "
                                "without taking one (Esc, or typing on), by pool", ["pool"])


class FrontObserver(RequestObserver):
    """Counts and times every request of the front, by route template, and logs who sent
    it (the edge's X-Forwarded-For when ``trusted_proxies`` names the peer)."""

    def __init__(self, router: falcon.routing.CompiledRouter,
                 static_prefixes: tuple[str, ...] = (),
                 trusted_proxies: frozenset[str] = frozenset()) -> None:
        super().__init__(router, static_prefixes)
        self.trusted_proxies = trusted_proxies

    def started(self, req: falcon.Request) -> None:
        IN_FLIGHT.inc()

    def finished(self, req: falcon.Request, resp: falcon.Response, route: str, seconds: float,
                 record: RequestRecord) -> None:
        IN_FLIGHT.dec()
        record.fields["client"] = client_address(req, self.trusted_proxies)
        REQUESTS.labels(route, method_label(req.method), str(resp.status_code)).inc()
        LATENCY.labels(route).observe(seconds)


def metrics_page() -> MetricsPage:
    return MetricsPage(REGISTRY)
