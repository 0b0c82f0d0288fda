"""Debian's Chromium, driven by Playwright, and the editor page opened in it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = os.environ.get("FANOUT_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Headless, and quiet: this machine has no route out, so no background networking.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


@contextmanager
def chromium() -> Iterator[Browser]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (scripts/test does, "
                    "as root) or set FANOUT_CHROMIUM")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@contextmanager
def editor_page(browser: Browser, front_url: str) -> Iterator[Page]:
    """The editor in a fresh browser context, once it has listed the pools."""
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    opened = context.new_page()
    opened.goto(f"{front_url}/")
    expect(opened.locator("#model")).to_have_value("small")
    yield opened
    context.close()


def options(page: Page) -> list[str]:
    """The texts of the suggestions the list shows."""
    return page.locator("#suggestions [role=option] .text").all_inner_texts()
