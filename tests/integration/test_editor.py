"""The web editor in a real headless Chromium, against real tiers on loopback."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.integration.browser import ARTIFACTS, editor_page, options
from tests.integration.servers import RunningTiers, paused

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def page(browser: Browser, tiers: RunningTiers) -> Iterator[Page]:
    with editor_page(browser, tiers.front_url) as opened:
        yield opened


def test_tab_offers_suggestions_and_enter_inserts_the_chosen_one_at_the_caret(
        page: Page) -> None:
    editor = page.locator("#document")
    editor.click()
    page.keyboard.type("Hello world")
    for _ in " world":
        page.keyboard.press("ArrowLeft")

    page.keyboard.press("Tab")
    expect(page.locator("#suggestions [role=option]")).to_have_count(3)
    expect(page.locator("#suggestions .time").first).to_contain_text(" s")
    page.keyboard.press("ArrowDown")
    expect(page.locator("#suggestion-1")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#suggestion-0")).to_have_attribute("aria-selected", "false")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "editor-suggestions.png"))
    chosen = options(page)[1]

    page.keyboard.press("Enter")

    assert editor.input_value() == "Hello" + chosen + " world"
    caret = editor.evaluate("e => e.selectionStart")
    assert caret == len("Hello" + chosen)
    expect(page.locator("#suggestions")).to_be_hidden()


def test_tab_again_fetches_a_fresh_set_and_escape_or_typing_closes_it(page: Page) -> None:
    page.locator("#document").click()
    page.keyboard.type("The nation")
    page.keyboard.press("Tab")
    expect(page.locator("#suggestions [role=option]")).to_have_count(3)
    first = options(page)
    page.keyboard.press("Tab")
    expect(page.locator("#suggestions [role=option] .text").first).not_to_have_text(first[0])

    page.keyboard.press("Escape")
    expect(page.locator("#suggestions")).to_be_hidden()
    page.keyboard.press("Tab")
    expect(page.locator("#suggestions [role=option]")).to_have_count(3)
    page.keyboard.type(" is")
    expect(page.locator("#suggestions")).to_be_hidden()
    assert page.locator("#document").input_value() == "The nation is"

    page.keyboard.press("Tab")  # and a click inserts too
    expect(page.locator("#suggestions [role=option]")).to_have_count(3)
    clicked = options(page)[2]
    page.locator("#suggestion-2").click()
    assert page.locator("#document").input_value() == "The nation is" + clicked
    expect(page.locator("#document")).to_be_focused()


def test_escape_then_tab_leaves_the_editor_for_the_settings(page: Page) -> None:
    page.locator("#document").click()
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")
    expect(page.locator("#settings summary")).to_be_focused()
    expect(page.locator("#status")).not_to_have_class("busy")


def test_typing_during_a_slow_request_aborts_it(page: Page, tiers: RunningTiers) -> None:
    workers = [int(pid) for pid in tiers.ready_slots("small").values()]
    page.locator("#document").click()
    page.keyboard.type("Slow")
    with paused(workers):  # the request will hang until they resume
        page.keyboard.press("Tab")
        expect(page.locator("#status")).to_have_class("busy")
        front_log = tiers.log_size("front")
        with page.expect_event("requestfailed") as failed:
            page.keyboard.type("er")
        # The page cut its request; the front saw it leave and ended the request. The
        # workers stay stopped until it has: resumed, they could answer before the front
        # looked.
        tiers.wait_for_log("front", "client left before its samples were in", since=front_log)
    assert failed.value.url.endswith("/autocomplete")
    assert "ABORTED" in (failed.value.failure or "")
    expect(page.locator("#suggestions")).to_be_hidden()
    assert options(page) == []
    assert page.locator("#document").input_value() == "Slower"


def test_a_reload_brings_back_the_document_and_the_settings(page: Page) -> None:
    page.locator("#document").click()
    page.keyboard.type("Keep this text.")
    page.locator("#settings summary").click()
    page.locator("input[name=temperature]").fill("0.7")
    page.locator("input[name=n_samples]").fill("2")
    page.locator("input[name=n_samples]").dispatch_event("change")

    page.reload()

    assert page.locator("#document").input_value() == "Keep this text."
    expect(page.locator("input[name=temperature]")).to_have_value("0.7")
    page.locator("#document").click()
    page.keyboard.press("End")
    page.keyboard.press("Tab")
    expect(page.locator("#suggestions [role=option]")).to_have_count(2)


def test_with_the_worker_tier_down_the_editor_says_so_and_keeps_the_text(
        page: Page, tiers: RunningTiers) -> None:
    # Last in this module: it stops the pool for good.
    pool = tiers.processes["pool-small"]
    os.killpg(pool.pid, signal.SIGTERM)
    pool.wait(timeout=30)
    page.locator("#document").click()
    page.keyboard.type("Nothing is lost")

    page.keyboard.press("Tab")

    expect(page.locator("#status")).to_have_class("error")
    expect(page.locator("#status")).to_contain_text("503")
    expect(page.locator("#status")).to_contain_text("Your text is safe")
    assert page.locator("#document").input_value() == "Nothing is lost"
    page.reload()
    assert page.locator("#document").input_value() == "Nothing is lost"
