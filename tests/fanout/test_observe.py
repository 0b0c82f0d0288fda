"""The request id rules and the observer middleware, on a small real Falcon app."""

from __future__ import annotations

import logging
import re
from typing import Any

import falcon
import falcon.testing
import pytest

from fanout.observe import (
    REQUEST_ID_HEADER,
    UNMATCHED,
    RequestObserver,
    RequestRecord,
    current_request_id,
    note,
    request_id,
)

NEW_ID = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize("offered", ["abc", "A-b_c.9", "x" * 64, "0", "..", "trace-7f.01_A"])
def test_a_well_formed_id_is_kept(offered: str) -> None:
    assert request_id(offered) == offered


@pytest.mark.parametrize("offered", [None, "", "x" * 65, "has space", "semi;colon", "a/b",
                                     "ünïcode", "line\nbreak", "tab\t", "a,b", "<script>"])
def test_anything_else_gets_a_new_uuid4_hex(offered: str | None) -> None:
    first, second = request_id(offered), request_id(offered)
    assert NEW_ID.fullmatch(first) and NEW_ID.fullmatch(second)
    assert first != second


class Seen:
    """Records what a tier's hooks are given."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, int]] = []
        self.started = 0


class Observer(RequestObserver):
    def __init__(self, router: falcon.routing.CompiledRouter, seen: Seen) -> None:
        super().__init__(router, static_prefixes=("/files/",))
        self.seen = seen

    def started(self, req: falcon.Request) -> None:
        self.seen.started += 1

    def finished(self, req: falcon.Request, resp: falcon.Response, route: str, seconds: float,
                 record: RequestRecord) -> None:
        self.seen.routes.append((route, resp.status_code))
        record.fields["tier"] = "test"


class Item:
    """Notes a field on the request's log line, and reports the id it sees in context."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        note(item=name)
        resp.media = {"id_in_context": current_request_id()}


class Refuse:
    """A middleware after the observer that refuses before routing, as the API key check."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.get_header("X-Refuse"):
            raise falcon.HTTPUnauthorized(title="no")


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def app(seen: Seen, tmp_path: Any) -> falcon.testing.TestClient:
    router = falcon.routing.CompiledRouter()
    middleware: list[Observer | Refuse] = [Observer(router, seen), Refuse()]
    application = falcon.App(router=router, middleware=middleware)
    application.add_route("/items/{name}", Item())
    (tmp_path / "a.txt").write_text("a")
    application.add_static_route("/files", str(tmp_path))
    return falcon.testing.TestClient(application)


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [vars(record)["fields"] for record in caplog.records
            if record.name == "fanout.requests"]


def test_the_id_is_answered_logged_and_in_context_while_serving(
        app: falcon.testing.TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "fanout.requests")
    result = app.simulate_get("/items/pen", headers={REQUEST_ID_HEADER: "client-42"})

    assert result.headers[REQUEST_ID_HEADER] == "client-42"
    assert result.json == {"id_in_context": "client-42"}
    assert current_request_id() is None  # reset once the request is answered
    [line] = request_lines(caplog)
    assert line["request_id"] == "client-42" and line["route"] == "/items/{name}"
    assert line["method"] == "GET" and line["status"] == 200 and line["path"] == "/items/pen"
    assert line["duration_ms"] >= 0
    assert line["item"] == "pen" and line["tier"] == "test"  # noted by resource and tier


def test_a_malformed_id_is_replaced_by_a_new_one(app: falcon.testing.TestClient) -> None:
    result = app.simulate_get("/items/pen", headers={REQUEST_ID_HEADER: "bad id; drop table"})
    answered = result.headers[REQUEST_ID_HEADER]
    assert NEW_ID.fullmatch(answered) and result.json == {"id_in_context": answered}
    assert NEW_ID.fullmatch(app.simulate_get("/items/pen").headers[REQUEST_ID_HEADER])


def test_routes_are_labelled_by_template_never_by_raw_path(
        app: falcon.testing.TestClient, seen: Seen) -> None:
    app.simulate_get("/items/one")
    app.simulate_get("/items/two")
    app.simulate_get("/files/a.txt")
    app.simulate_get("/nothing/here")
    refused = app.simulate_get("/items/three", headers={"X-Refuse": "1"})

    assert seen.routes == [("/items/{name}", 200), ("/items/{name}", 200), ("/files/*", 200),
                           (UNMATCHED, 404), ("/items/{name}", 401)]
    assert seen.started == 5
    # A refused request still answers with its id.
    assert NEW_ID.fullmatch(refused.headers[REQUEST_ID_HEADER])


def test_fields_noted_outside_a_request_go_nowhere() -> None:
    note(stray=True)  # no request: no error, nothing kept
    assert current_request_id() is None
