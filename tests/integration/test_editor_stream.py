"""The editor's streamed suggestions in a real headless Chromium, at a pace the test sets.

The pool is a stand-in (``paced_worker``) under the real worker server: each piece of
every sample waits for the test to open its gate, so the test sees every stage of the
stream, whatever the machine's speed, and the front, the page and the browser are real.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.integration.browser import editor_page, options
from tests.integration.conftest import SAMPLES, Paced
from tests.integration.paced_worker import PIECES

pytestmark = [pytest.mark.integration, pytest.mark.browser]


@pytest.fixture
def page(browser: Browser, paced: Paced) -> Iterator[Page]:
    with editor_page(browser, paced.tiers.front_url) as opened:
        yield opened


def stage(step: int) -> str:
    """A pattern for what a sample has written once gate ``step`` opened (any seed)."""
    written = "".join(PIECES[:step + 1])
    return "^" + re.escape(written).replace(re.escape("{seed}"), "[0-9]+") + "$"


# True once each of ``n`` suggestions shows text matching ``pattern`` and is still busy.
SHOWN_WHILE_WRITTEN = """([pattern, n]) => {
  const items = [...document.querySelectorAll("#suggestions [role=option]")];
  return items.length === n && items.every((item) =>
    item.getAttribute("aria-busy") === "true"
    && new RegExp(pattern).test(item.querySelector(".text").textContent));
}"""


def test_streamed_suggestions_grow_as_they_are_written(page: Page, paced: Paced) -> None:
    page.locator("#settings summary").click()
    page.locator("input[name=stream]").check()
    page.locator("input[name=length]").fill("80")
    page.locator("input[name=length]").dispatch_event("change")
    page.reload()  # the setting is kept, like the others
    expect(page.locator("input[name=stream]")).to_be_checked()
    page.locator("#document").click()
    page.keyboard.type("The nation")

    with page.expect_request("**/v1/completions") as streamed:
        page.keyboard.press("Tab")
    assert (streamed.value.post_data_json or {}).get("stream") is True

    # Each piece in turn: the open list shows every suggestion grown by it, still busy.
    stages = []
    for step in range(len(PIECES)):
        paced.gates.open(step)
        page.wait_for_function(SHOWN_WHILE_WRITTEN, arg=[stage(step), SAMPLES])
        stages.append(options(page))
    paced.gates.open(len(PIECES))  # and now the samples end

    expect(page.locator("#suggestions [role=option][aria-busy=false]")).to_have_count(SAMPLES)
    expect(page.locator("#status")).to_contain_text(f"{SAMPLES} suggestions in")
    expect(page.locator("#suggestions .time").first).to_contain_text(" s")
    final = options(page)
    assert stages[-1] == final
    for shown in stages[:-1]:  # each stage the start of the finished text, and shorter
        assert all(f.startswith(s) and len(s) < len(f) for s, f in zip(shown, final, strict=True))

    page.keyboard.press("Enter")
    assert page.locator("#document").input_value() == "The nation" + final[0]
