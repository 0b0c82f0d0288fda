"""Write With Transformer's path against real tiers: ``POST /autocomplete/gpt2/medium``
is pool ``small`` by its alias (tests/integration/conftest.py), through gunicorn."""

from __future__ import annotations

import pytest
import requests

from tests.integration.servers import RunningTiers

pytestmark = pytest.mark.integration


def test_wwt_clients_path_and_body_reach_the_aliased_pool(tiers: RunningTiers) -> None:
    # What WwT's editor posts: the alias in the path, and again as model_size.
    answer = requests.post(f"{tiers.front_url}/autocomplete/gpt2/medium", timeout=30, json={
        "context": "The nation", "model_size": "gpt2/medium", "top_p": 0.9,
        "temperature": 1.0, "max_time": 5.0, "length": 3, "n_samples": 2, "seed": 7})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model_size"] == "small" and len(body["sentences"]) == 2
    assert {s["worker"]["pool"] for s in body["sentences"]} == {"small"}
    # The same request by the pool's own name gives the same texts: the same pool.
    by_name = requests.post(f"{tiers.front_url}/autocomplete", timeout=30, json={
        "context": "The nation", "model_size": "small", "top_p": 0.9, "temperature": 1.0,
        "max_time": 5.0, "length": 3, "n_samples": 2, "seed": 7}).json()
    assert [s["value"] for s in by_name["sentences"]] == [s["value"] for s in body["sentences"]]


def test_a_path_naming_no_pool_is_a_404_and_models_lists_the_aliases(
        tiers: RunningTiers) -> None:
    missing = requests.post(f"{tiers.front_url}/autocomplete/gpt2/xl", timeout=10,
                            json={"context": "x"})
    assert missing.status_code == 404 and "gpt2/medium" in missing.json()["description"]
    models = requests.get(f"{tiers.front_url}/models", timeout=10).json()["models"]
    assert [(m["name"], m["aliases"]) for m in models] == [("small", ["gpt2/medium"]),
                                                           ("ghost", ["gpt2/ghost"])]
