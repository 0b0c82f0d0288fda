"""A request's samples spread over distinct workers: gunicorn's accept loop at work.

A sync worker accepts one request at a time, so samples that are all in flight at once
hold as many workers. With the paced stand-in pool no sample can end before the test
opens the gates, so "all in flight at once" holds however the machine schedules them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.integration.conftest import SAMPLES, Paced
from tests.integration.paced_worker import PIECES

pytestmark = pytest.mark.integration


def test_samples_in_flight_hold_distinct_workers(paced: Paced) -> None:
    workers = paced.tiers.ready_slots("small")
    assert len(workers) == SAMPLES
    with ThreadPoolExecutor(1) as executor:
        sent = executor.submit(requests.post, f"{paced.tiers.front_url}/autocomplete",
                               json={"context": "Spread", "n_samples": SAMPLES}, timeout=60)
        # Every worker holds one of the request's samples, none of which can end yet.
        paced.tiers.wait_serving("small", list(workers.values()))
        for step in range(len(PIECES) + 1):
            paced.gates.open(step)
        response = sent.result()

    assert response.status_code == 200, response.text
    served = {str(s["worker"]["slot"]): s["worker"]["pid"] for s in response.json()["sentences"]}
    assert served == workers
