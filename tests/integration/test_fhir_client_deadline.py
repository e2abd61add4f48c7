"""What a FHIR server that is too slow means for the nurse, end to end.

The FHIR client ends a request at its deadline (``KINDREFLEX_FHIR_TIMEOUT_SECONDS``, the
whole exchange: ``test_fhir_client.py``). Here: the nurse's triage page over a FHIR server
trickling its answer.
"""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from service.db.base import Database
from tests.integration.test_nurse_screens import _chart
from tests.support.served import Trickled
from tests.support.sessions import make_app, signed_in
from tests.support.write_path import make_tenant

pytestmark = pytest.mark.fhirserver


def test_a_chart_trickled_past_the_deadline_is_not_loaded_and_the_page_comes_in_time(
    database_url: str, database: Database
) -> None:
    """The FHIR server sends the chart a byte every 0.05 s (a minute in all, each read well
    within the per-operation timeout). Before, the nurse's page waited for all of it; now
    it comes at the deadline, saying the children could not be loaded, the form usable."""
    answer = json.dumps(_chart()).encode()
    answer = answer[:-1] + b" " * max(0, 1200 - len(answer)) + b"}"
    with Trickled(answer, pause=0.05, path="/fhir") as slow:
        tenant = make_tenant(database, "default", slow.url)
        app = make_app(database_url, database)
        with TestClient(app) as client:
            nurse = signed_in(
                app,
                tenant,
                "Practitioner/nurse",
                "nurse",
                fhir_base_url=slow.url,
                patient_id="p1",
                encounter_id="e1",
            )
            started = time.monotonic()
            page = client.get("/app/triage", headers=nurse.headers)
            elapsed = time.monotonic() - started

    assert page.status_code == 200
    assert "konden nu niet geladen worden" in page.text
    assert "Emma" not in page.text  # the chart's child: nothing of the trickle was used
    assert elapsed < app.state.settings.fhir_timeout_seconds + 2
