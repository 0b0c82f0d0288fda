"""What the editor reports to ``POST /events``, in a real headless Chromium against real
tiers: a list shown, the rank of the suggestion taken (as first shown, even after typing
through), a dismissal on Esc or by typing on, and nothing for a list a new request replaced.

Requests reach ``page.on("request")`` in the order the page sends them, so the event that
follows an action shows that no other event came between: no sleeps, no time-outs to wait
out. Each event is also answered 204 by the real front.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from playwright.sync_api import Browser, Page, Request, expect

from tests.integration.browser import editor_page, options
from tests.integration.servers import RunningTiers

pytestmark = [pytest.mark.integration, pytest.mark.browser]


class Events:
    """The /events requests a page sends, in order, with their bodies and answers."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.requests: list[Request] = []
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        if urlsplit(request.url).path == "/events":
            self.requests.append(request)

    def next(self, count: int) -> dict[str, Any]:
        """The body of event number ``count`` (0-based) once the page has sent it, and
        answered 204 by the front."""
        self.page.wait_for_function(
            "count => performance.getEntriesByName(location.origin + '/events').length"
            " > count", arg=count)
        request = self.requests[count]
        response = request.response()
        assert response is not None and response.status == 204
        body = request.post_data_json
        assert isinstance(body, dict)
        return body


@pytest.fixture
def page(browser: Browser, tiers: RunningTiers) -> Iterator[Page]:
    with editor_page(browser, tiers.front_url) as opened:
        yield opened


def ask(page: Page) -> None:
    page.keyboard.press("Tab")
    expect(page.locator("#suggestions [role=option]")).to_have_count(3)


def accepted_at(tiers: RunningTiers, rank: int) -> float:
    """fanout_suggestions_accepted_total{pool="small",rank} in the front's /metrics."""
    metrics = requests.get(f"{tiers.front_url}/metrics", timeout=10).text
    line = f'fanout_suggestions_accepted_total{{pool="small",rank="{rank}"}} '
    return float(next(row for row in metrics.splitlines() if row.startswith(line)).split()[-1])


def test_accepting_the_second_suggestion_reports_rank_1(page: Page, tiers: RunningTiers) -> None:
    before = accepted_at(tiers, 1)
    events = Events(page)
    page.locator("#document").click()
    page.keyboard.type("The nation")
    ask(page)
    assert events.next(0) == {"event": "shown", "model_size": "small", "n": 3}

    page.keyboard.press("ArrowDown")
    chosen = options(page)[1]
    page.keyboard.press("Enter")

    assert events.next(1) == {"event": "accepted", "model_size": "small", "rank": 1}
    assert page.locator("#document").input_value() == "The nation" + chosen
    assert events.requests[1].headers.get("authorization") is None  # no key set
    assert accepted_at(tiers, 1) == before + 1  # counted by the real front


def test_esc_and_typing_on_dismiss_and_a_new_request_does_not(page: Page) -> None:
    events = Events(page)
    page.locator("#document").click()
    page.keyboard.type("It was")
    ask(page)
    page.keyboard.press("Escape")
    assert [events.next(n)["event"] for n in (0, 1)] == ["shown", "dismissed"]
    assert events.next(1) == {"event": "dismissed", "model_size": "small"}

    ask(page)
    ask(page)  # Tab again: the new list replaces the old one, which is not dismissed
    assert [events.next(n)["event"] for n in (2, 3)] == ["shown", "shown"]

    # Typing what no suggestion goes on with closes the list: a dismissal.
    texts = options(page)
    typed = next(c for c in "\u00a7#@~" if not any(t.startswith(c) for t in texts))
    page.keyboard.type(typed)
    expect(page.locator("#suggestions")).to_be_hidden()
    assert events.next(4) == {"event": "dismissed", "model_size": "small"}
    assert len(events.requests) == 5


def test_a_suggestion_typed_through_keeps_its_first_rank_and_the_key_goes_along(
        page: Page) -> None:
    events = Events(page)
    page.locator("#settings").evaluate("details => { details.open = true; }")
    key = page.locator("#api-key")
    key.fill("events-key-1")  # this front has no keys: it takes any, or none
    key.dispatch_event("change")
    expect(page.locator("#model")).to_have_value("small")
    page.locator("#document").click()
    page.keyboard.type("Once upon")
    ask(page)
    texts = options(page)
    # A later one, with more than its first character to type, and that character no key
    # the list acts on (a text may start with a new line: Enter would take it); best one
    # that the first does not start like, so that typing moves it up the narrowed list.
    rank = max((1, 2), key=lambda r: (texts[r][:1].isprintable(), len(texts[r]) > 1,
                                      texts[r][:1] != texts[0][:1], len(texts[r])))
    for _ in range(rank):
        page.keyboard.press("ArrowDown")
    page.keyboard.type(texts[rank][0])  # typed through: the list narrows to those it starts
    expect(page.locator("#suggestions [aria-selected=true] .text")).to_have_text(
        texts[rank][1:])
    narrowed = [t for t in texts if t.startswith(texts[rank][0]) and t != texts[rank][0]]
    expect(page.locator("#suggestions [role=option]")).to_have_count(len(narrowed))

    page.keyboard.press("Enter")

    assert events.next(0)["event"] == "shown"
    assert events.next(1) == {"event": "accepted", "model_size": "small", "rank": rank}
    assert events.requests[1].headers["authorization"] == "Bearer events-key-1"
    assert page.locator("#document").input_value() == "Once upon" + texts[rank]
