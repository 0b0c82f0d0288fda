"""POST /events: strict bodies, the same keys as the rest of the API, counters by pool and rank."""

from __future__ import annotations

from typing import Any

import falcon.testing
import pytest
from prometheus_client import REGISTRY

from fanout.layout import Layout, load_layout
from frontend_api.access import read_api_keys
from frontend_api.app import create_app
from tests.conftest import LayoutFactory
from tests.frontend_api.test_resources import EchoFanout


@pytest.fixture
def layout(write_layout: LayoutFactory) -> Layout:
    return load_layout(write_layout(pools={
        "evsmall": {"bind": "127.0.0.1:9101", "slots": ["cpu"], "aliases": ["gpt2/evsmall"]},
        "evmedium": {"bind": "127.0.0.1:9102", "slots": ["cpu"]}},
        front={"max_samples": 4}))


def client(layout: Layout, keys: str | None = None) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(layout, EchoFanout(),
                                                read_api_keys(keys, None) if keys else None))


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"fanout_suggestions_{name}_total", labels) or 0.0


def test_each_event_moves_its_counter_by_pool_and_rank(layout: Layout) -> None:
    app = client(layout)
    before = {rank: counted("shown", pool="evsmall", rank=str(rank)) for rank in range(4)}
    accepted = counted("accepted", pool="evsmall", rank="1")
    dismissed = counted("dismissed", pool="evmedium")

    answers = [app.simulate_post("/events", json=body) for body in (
        {"event": "shown", "n": 3},  # the default pool
        {"event": "accepted", "rank": 1, "model_size": "gpt2/evsmall"},  # an alias: its pool
        {"event": "dismissed", "model_size": "evmedium"})]

    assert [a.status_code for a in answers] == [204] * 3 and answers[0].text == ""
    # A list of 3 counts once at ranks 0, 1 and 2: rank 0 counts lists.
    assert [counted("shown", pool="evsmall", rank=str(r)) - before[r] for r in range(4)] == [
        1, 1, 1, 0]
    assert counted("accepted", pool="evsmall", rank="1") - accepted == 1
    assert counted("dismissed", pool="evmedium") - dismissed == 1
    assert REGISTRY.get_sample_value("fanout_suggestions_accepted_total",
                                     {"pool": "gpt2/evsmall", "rank": "1"}) is None


def test_every_pool_and_rank_reads_0_before_any_event(write_layout: LayoutFactory) -> None:
    client(load_layout(write_layout(pools={
        "evfresh": {"bind": "127.0.0.1:9101", "slots": ["cpu"]}}, front={"max_samples": 2},
        generation={"defaults": {"n_samples": 2}})))
    for name, labels in (("shown", {"rank": "1"}), ("accepted", {"rank": "0"}),
                         ("dismissed", {})):
        assert REGISTRY.get_sample_value(f"fanout_suggestions_{name}_total",
                                         {"pool": "evfresh", **labels}) == 0.0
    assert REGISTRY.get_sample_value("fanout_suggestions_shown_total",
                                     {"pool": "evfresh", "rank": "2"}) is None


@pytest.mark.parametrize(("body", "field", "status"), [
    ({}, "event", 400),
    ([], "body", 400),
    ({"event": "liked"}, "event", 400),
    ({"event": 1}, "event", 400),
    ({"event": "shown"}, "n", 400),
    ({"event": "shown", "n": 0}, "n", 400),
    ({"event": "shown", "n": 5}, "n", 400),  # past front.max_samples
    ({"event": "shown", "n": 2.5}, "n", 400),
    ({"event": "shown", "n": 2, "rank": 0}, "rank", 400),
    ({"event": "accepted"}, "rank", 400),
    ({"event": "accepted", "rank": -1}, "rank", 400),
    ({"event": "accepted", "rank": 4}, "rank", 400),  # ranks are 0..max_samples-1
    ({"event": "accepted", "rank": True}, "rank", 400),
    ({"event": "accepted", "rank": 0, "n": 3}, "n", 400),
    ({"event": "dismissed", "rank": 0}, "rank", 400),
    ({"event": "dismissed", "text": "secret"}, "text", 400),
    ({"event": "dismissed", "model_size": "gpt2/xl"}, "model_size", 404),
    ({"event": "dismissed", "model_size": 3}, "model_size", 400),
])
def test_a_bad_body_is_refused_naming_the_field_and_counts_nothing(
        layout: Layout, body: Any, field: str, status: int) -> None:
    before = sum(counted(name, pool=pool, **({} if name == "dismissed" else {"rank": "0"}))
                 for name in ("shown", "accepted", "dismissed")
                 for pool in ("evsmall", "evmedium"))
    answer = client(layout).simulate_post("/events", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json["field"] == field
    after = sum(counted(name, pool=pool, **({} if name == "dismissed" else {"rank": "0"}))
                for name in ("shown", "accepted", "dismissed")
                for pool in ("evsmall", "evmedium"))
    assert after == before


def test_events_need_the_key_when_keys_are_configured(layout: Layout) -> None:
    app = client(layout, keys="key-a")
    body = {"event": "dismissed"}
    refused = app.simulate_post("/events", json=body)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = app.simulate_post("/events", json=body, headers={"Authorization": "Bearer key-b"})
    assert wrong.status_code == 401
    taken = app.simulate_post("/events", json=body, headers={"Authorization": "Bearer key-a"})
    assert taken.status_code == 204


def test_a_body_that_is_no_json_object_is_4xx(layout: Layout) -> None:
    app = client(layout)
    assert app.simulate_post("/events", body="event=shown",
                             content_type="application/x-www-form-urlencoded").status_code == 415
    assert app.simulate_post("/events", body=b"{" + b" " * 2000 + b"}",
                             content_type="application/json").status_code == 413
