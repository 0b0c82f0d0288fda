"""Type-through and suggest-while-typing in the editor, in a real headless Chromium.

The suggestions come from the real tiers (random texts from the tiny model, read back from
the page before a test types them) or, streamed, from the paced pool, so a suggestion can
be typed through while it is still being written. Time in the page is Playwright's clock:
a pause lasts exactly as long as the test says, however busy the machine is.

That nothing was asked is shown by asking: requests reach ``page.on("request")`` in the
order the page sends them, so when a later request is seen, an earlier one would have been.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from tests.integration.browser import editor_page
from tests.integration.conftest import SAMPLES, Paced
from tests.integration.paced_worker import PIECES
from tests.integration.servers import RunningTiers

pytestmark = [pytest.mark.integration, pytest.mark.browser]

SUGGESTION_PATHS = {"/autocomplete", "/v1/completions"}
START = datetime.datetime(2026, 1, 5, 9, 0, 0)


def asks(request: Request) -> bool:
    return urlsplit(request.url).path in SUGGESTION_PATHS


class Asked:
    """The bodies of the suggestion requests a page sends, in the order it sends them."""

    def __init__(self, page: Page) -> None:
        self.bodies: list[dict[str, Any]] = []
        page.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        if asks(request):
            self.bodies.append(request.post_data_json or {})


def shown(page: Page) -> list[str]:
    """The texts the list shows, exactly (textContent, not the rendered text)."""
    return page.locator("#suggestions [role=option] .text").evaluate_all(
        "items => items.map((item) => item.textContent)")


def continuing(texts: list[str], typed: str) -> list[str]:
    """What the list should show once ``typed`` is typed through ``texts``."""
    return [text[len(typed):] for text in texts if text.startswith(typed) and text != typed]


def narrowing_prefix(texts: list[str]) -> tuple[int, str]:
    """A suggestion and the shortest start of it that only some suggestions share."""
    for index, text in enumerate(texts):
        for end in range(1, len(text)):
            if not text[end - 1].isprintable():  # Enter, Tab or no key at all
                break
            if len(continuing(texts, text[:end])) < len(texts):
                return index, text[:end]
    raise AssertionError(f"no suggestion narrows the list by typing: {texts!r}")


def streamed(*pieces: str) -> str:
    """A pattern for what a paced sample has written (any seed)."""
    return "^" + re.escape("".join(pieces)).replace(re.escape("{seed}"), "[0-9]+") + "$"


def wait_for_options(page: Page, texts: list[str]) -> None:
    page.wait_for_function(
        """texts => JSON.stringify([...document.querySelectorAll(
             "#suggestions [role=option] .text")].map((item) => item.textContent))
           === JSON.stringify(texts)""", arg=texts)


@pytest.fixture
def page(browser: Browser, tiers: RunningTiers) -> Iterator[Page]:
    with editor_page(browser, tiers.front_url) as opened:
        yield opened


@pytest.fixture
def clocked(page: Page) -> Page:
    """The editor with Playwright's clock in its page; the test pauses and runs it."""
    page.clock.install(time=START)
    page.reload()
    expect(page.locator("#model")).to_have_value("small")
    return page


def suggest_while_typing(page: Page) -> None:
    """Tick the setting, see it kept over a reload, and stop the page's clock."""
    page.locator("#settings summary").click()
    page.locator("input[name=suggest_while_typing]").check()
    page.reload()
    expect(page.locator("input[name=suggest_while_typing]")).to_be_checked()
    page.clock.pause_at(START + datetime.timedelta(hours=1))
    page.locator("#document").click()


def pause_ms(page: Page) -> int:
    """The pause the editor waits now before it asks by itself."""
    return int(page.locator("#suggest-pause").get_attribute("data-ms") or "0")


def test_typing_through_a_suggestion_narrows_the_list_and_asks_nothing(page: Page) -> None:
    asked = Asked(page)
    editor = page.locator("#document")
    editor.click()
    page.keyboard.type("The nation")
    page.keyboard.press("Tab")
    expect(page.locator("#suggestions [role=option]")).to_have_count(3)
    texts = shown(page)
    chosen, prefix = narrowing_prefix(texts)

    for end in range(1, len(prefix) + 1):  # each character consumed from what is shown
        page.keyboard.type(prefix[end - 1])
        wait_for_options(page, continuing(texts, prefix[:end]))
    page.keyboard.press("Backspace")  # gives the last character back to the list
    wait_for_options(page, continuing(texts, prefix[:-1]))
    page.keyboard.type(prefix[-1])
    wait_for_options(page, continuing(texts, prefix))
    narrowed = continuing(texts, prefix)
    highlighted = page.locator("#suggestions [aria-selected=true]").get_attribute("id") or ""
    moves = narrowed.index(texts[chosen][len(prefix):]) - int(highlighted.split("-")[1])
    for _ in range(moves % len(narrowed)):
        page.keyboard.press("ArrowDown")

    page.keyboard.press("Enter")

    assert editor.input_value() == "The nation" + texts[chosen]
    expect(page.locator("#suggestions")).to_be_hidden()
    with page.expect_request(asks):
        page.keyboard.press("Tab")
    assert [body["context"] for body in asked.bodies] == [
        "The nation", "The nation" + texts[chosen]]  # nothing asked while typing through

    # A character no suggestion goes on with closes the list and stays in the text.
    expect(page.locator("#suggestions [role=option]")).to_have_count(3)
    stray = next(c for c in "qQzZxX#~" if not any(t.startswith(c) for t in shown(page)))
    page.keyboard.type(stray)
    expect(page.locator("#suggestions")).to_be_hidden()
    assert editor.input_value() == "The nation" + texts[chosen] + stray


def test_a_streamed_suggestion_is_typed_through_as_far_as_it_has_arrived(
        browser: Browser, paced: Paced) -> None:
    with editor_page(browser, paced.tiers.front_url) as page:
        asked = Asked(page)
        page.locator("#settings summary").click()
        page.locator("input[name=stream]").check()
        page.locator("input[name=length]").fill("80")
        page.locator("input[name=length]").dispatch_event("change")
        page.locator("#document").click()
        page.keyboard.type("The nation")
        with page.expect_request(asks):
            page.keyboard.press("Tab")
        paced.gates.open(0)
        wait_for_options(page, [PIECES[0]] * SAMPLES)

        page.keyboard.type(PIECES[0][:3])  # " Wr" of " Written", still streaming
        wait_for_options(page, [PIECES[0][3:]] * SAMPLES)
        paced.gates.open(1)  # every suggestion grows by " by sample <its seed>,"
        page.wait_for_function(
            """([pattern, n]) => {
                 const items = [...document.querySelectorAll("#suggestions [role=option] .text")];
                 return items.length === n
                   && items.every((item) => new RegExp(pattern).test(item.textContent));
               }""", arg=[streamed(PIECES[0][3:], PIECES[1]), SAMPLES])
        texts = [PIECES[0][:3] + text for text in shown(page)]
        chosen = texts[1]

        page.keyboard.type(chosen[3:])  # all of it that has arrived: kept, still busy
        wait_for_options(page, ["" for text in texts if text == chosen])
        expect(page.locator("#suggestions [aria-busy=true]").first).to_be_visible()
        paced.gates.open(2)  # and it goes on growing past what was typed
        wait_for_options(page, [PIECES[2] for text in texts if text == chosen])

        page.keyboard.press("Enter")

        assert page.locator("#document").input_value() == "The nation" + chosen + PIECES[2]
        with page.expect_request(asks):
            page.keyboard.press("Tab")
        assert len(asked.bodies) == 2, asked.bodies  # the first Tab and this one
        for step in range(3, len(PIECES) + 1):  # let it end: the pool stops at once then
            paced.gates.open(step)
        expect(page.locator("#status")).to_contain_text(f"{SAMPLES} suggestions in")


def test_with_the_setting_off_a_pause_asks_nothing(clocked: Page) -> None:
    page = clocked
    asked = Asked(page)
    expect(page.locator("input[name=suggest_while_typing]")).not_to_be_checked()
    page.clock.pause_at(START + datetime.timedelta(hours=1))
    page.locator("#document").click()
    page.keyboard.type("Once upon a time")

    page.clock.run_for(5000)

    with page.expect_request(asks):
        page.keyboard.press("Tab")
    assert len(asked.bodies) == 1, asked.bodies  # Tab's, and nothing before it


def test_a_pause_in_typing_asks_with_the_text_typed_and_a_keystroke_restarts_it(
        clocked: Page) -> None:
    page = clocked
    asked = Asked(page)
    suggest_while_typing(page)

    page.keyboard.type("Once")  # quick typing: a short pause
    first = pause_ms(page)
    assert 100 <= first < 200
    page.clock.run_for(first - 1)
    page.keyboard.type(" upon")  # just in time: the pause starts again
    again = pause_ms(page)
    page.clock.run_for(again - 1)  # past the first pause's end, not yet this one's
    with page.expect_request(asks) as request:
        page.clock.run_for(1)

    assert (request.value.post_data_json or {})["context"] == "Once upon"
    assert len(asked.bodies) == 1, asked.bodies
    expect(page.locator("#suggestions [role=option]")).to_have_count(3)

    # Nothing is asked for the text last asked for, nor while a list is open.
    page.keyboard.press("Escape")
    page.keyboard.type("x")
    page.keyboard.press("Backspace")
    page.clock.run_for(1000)
    with page.expect_request(asks):
        page.keyboard.press("Tab")
    expect(page.locator("#suggestions [role=option]")).to_have_count(3)
    texts = shown(page)
    _, prefix = narrowing_prefix(texts)
    page.keyboard.type(prefix[0])
    wait_for_options(page, continuing(texts, prefix[0]))
    page.clock.run_for(1000)
    stray = next(c for c in "qQzZxX#~" if not any(t.startswith(c) for t in shown(page)))
    page.keyboard.type(stray)  # the list closes; the next pause asks again
    expect(page.locator("#suggestions")).to_be_hidden()
    with page.expect_request(asks) as last:
        page.clock.run_for(pause_ms(page))

    assert (last.value.post_data_json or {})["context"] == "Once upon" + prefix[0] + stray
    assert len(asked.bodies) == 3, asked.bodies


def test_the_pause_lengthens_for_a_slower_writer(clocked: Page) -> None:
    page = clocked
    asked = Asked(page)
    suggest_while_typing(page)
    pauses = []

    for key in "Slowly":  # 150 ms between keys, under the pause each time
        page.keyboard.type(key)
        pauses.append(pause_ms(page))
        page.clock.run_for(150)

    assert pauses[0] == 200 and pauses == sorted(pauses) and 200 < pauses[-1] <= 1000
    with page.expect_request(asks) as request:
        page.clock.run_for(pauses[-1] - 150)
    assert (request.value.post_data_json or {})["context"] == "Slowly"
    assert len(asked.bodies) == 1, asked.bodies


def test_tab_again_on_the_same_text_excludes_what_was_shown(page: Page) -> None:
    """The editor asks for distinct suggestions, and Tab again on the same text sends the
    ones already shown as ``exclude``."""
    asked = Asked(page)
    page.locator("#document").click()
    page.keyboard.type("The nation")
    with page.expect_request(asks):
        page.keyboard.press("Tab")
    expect(page.locator("#suggestions [role=option]")).to_have_count(SAMPLES)
    first = shown(page)
    with page.expect_request(asks):
        page.keyboard.press("Tab")
    expect(page.locator("#suggestions [role=option]")).to_have_count(SAMPLES)

    before, again = asked.bodies[-2:]
    assert before["distinct"] is True and "exclude" not in before
    assert again["distinct"] is True
    assert again["exclude"] == [text for text in first if text.strip()]
    # (that the server then answers with others is tests/integration/test_fanout.py's)
    page.keyboard.type(" was")  # a new context: nothing to exclude
    with page.expect_request(asks):
        page.keyboard.press("Tab")
    expect(page.locator("#suggestions [role=option]")).to_have_count(SAMPLES)
    assert "exclude" not in asked.bodies[-1]
