"""The web editor against a front that needs an API key, in a real headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, expect

from fanout.tools.ports import free_port
from frontend_api.access import API_KEYS_ENV
from tests.conftest import layout_document
from tests.integration.browser import ARTIFACTS
from tests.integration.servers import RunningTiers, started

pytestmark = [pytest.mark.integration, pytest.mark.browser]

KEY = "editor-key-7f3a9c"


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[RunningTiers]:
    """Pool ``small`` (2 CPU workers) and a front started with ``$FANOUT_API_KEYS``."""
    folder = tmp_path_factory.mktemp("keyed-tiers")
    document = layout_document(
        tiny_model_dir,
        pools={"small": {"bind": f"127.0.0.1:{free_port()}",
                         "slots": [{"device": "cpu", "threads": 1}] * 2}},
        front={"bind": f"127.0.0.1:{free_port()}", "network_slack": 2.0})
    with started(document, folder, {"small"}, only={"pool-small", "front"},
                 env={API_KEYS_ENV: f"some-other-key,{KEY}"}) as running:
        yield running


def test_the_real_front_refuses_without_the_key(tiers: RunningTiers) -> None:
    url = f"{tiers.front_url}/autocomplete"
    refused = requests.post(url, json={"context": "x"}, timeout=10)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{tiers.front_url}/health", timeout=10).status_code == 200
    answered = requests.post(url, json={"context": "x", "n_samples": 1, "length": 2},
                             headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert answered.status_code == 200, answered.text


def test_without_a_key_the_editor_says_so_and_with_it_tab_gives_suggestions(
        browser: Browser, tiers: RunningTiers) -> None:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    status, editor = page.locator("#status"), page.locator("#document")
    key = page.locator("#api-key")
    try:
        page.goto(f"{tiers.front_url}/")
        # The page itself is open; the list of models is not.
        expect(status).to_contain_text("This server needs an API key: set it in Settings")
        expect(page.locator("#settings")).to_have_attribute("open", "")

        editor.click()
        page.keyboard.type("Keep every word")
        page.keyboard.press("Tab")
        expect(status).to_have_class("error")
        expect(status).to_contain_text("needs an API key")
        expect(page.locator("#suggestions")).to_be_hidden()
        assert editor.input_value() == "Keep every word"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "editor-api-key-needed.png"))

        key.fill("not-the-key")
        key.dispatch_event("change")
        editor.click()
        page.keyboard.press("End")
        page.keyboard.press("Tab")
        expect(status).to_contain_text("refused the API key")
        assert editor.input_value() == "Keep every word"

        key.fill(KEY)
        key.dispatch_event("change")
        expect(page.locator("#model")).to_have_value("small")  # /models answered this time
        editor.click()
        page.keyboard.press("End")
        page.keyboard.press("Tab")
        expect(page.locator("#suggestions [role=option]")).to_have_count(3)
        expect(status).not_to_have_class("error")
        page.screenshot(path=str(ARTIFACTS / "editor-api-key.png"))

        page.reload()  # the key is kept like the other settings
        expect(key).to_have_value(KEY)
        expect(page.locator("#model")).to_have_value("small")
        assert editor.input_value() == "Keep every word"
    finally:
        context.close()
