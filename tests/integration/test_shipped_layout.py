"""The shipped gpu_layout.yaml, as it is but on free ports: both trained models answer."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests
import yaml

from fanout.layout import DEFAULT_LAYOUT
from fanout.tools.ports import free_port
from tests.integration.servers import RunningTiers, started

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shipped_tiers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTiers]:
    folder = tmp_path_factory.mktemp("shipped")
    document = yaml.safe_load(DEFAULT_LAYOUT.read_text())
    document["front"]["bind"] = f"127.0.0.1:{free_port()}"
    document.setdefault("edge", {})["front_bind"] = f"127.0.0.1:{free_port()}"
    for pool in document["pools"].values():
        pool["bind"] = f"127.0.0.1:{free_port()}"
        pool["model"] = str((DEFAULT_LAYOUT.parent / pool["model"]).resolve())
    with started(document, folder) as running:
        yield running


@pytest.mark.parametrize("pool", ["small", "medium"])
def test_each_shipped_model_answers_three_samples(shipped_tiers: RunningTiers,
                                                       pool: str) -> None:
    response = requests.post(f"{shipped_tiers.front_url}/autocomplete", timeout=60,
                             json={"context": "The nation", "model_size": pool, "seed": 7,
                                   "length": 30, "max_time": 20})  # no clock cuts it short

    assert response.status_code == 200, response.text
    sentences = response.json()["sentences"]
    assert len(sentences) == 3
    assert {s["worker"]["pool"] for s in sentences} == {pool}
    ready = shipped_tiers.ready_slots(pool)  # which worker takes which: test_spread.py
    assert all(ready[str(s["worker"]["slot"])] == s["worker"]["pid"] for s in sentences)
    words = [w for s in sentences for w in re.findall(r"[A-Za-z]+", s["value"])]
    assert len(words) >= 30  # prose, not byte soup: 3 x 30 tokens hold many words


def test_the_models_route_lists_both_shipped_pools(shipped_tiers: RunningTiers) -> None:
    body = requests.get(f"{shipped_tiers.front_url}/models", timeout=5).json()
    assert body["default"] == "small"
    assert [m["name"] for m in body["models"]] == ["small", "medium"]
