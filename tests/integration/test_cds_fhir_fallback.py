"""Prefetch missing: the service asks a REAL FHIR server (sekmet, seeded with the sandbox's
Flemish ED patients) once, and degrades to the generic card when it cannot.

The FHIR requests are counted twice: by the service's own counter (an httpx event hook on
the client that talks to FHIR servers) and in the FHIR server's access log.
"""

from __future__ import annotations

import asyncio
import codecs
import gzip
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from sandbox.cds_client import compute_prefetch
from sandbox.fhir_server import FhirServer
from sandbox.seed import SeedResult, seed
from service.cds.prefetch import FETCH_MAX_BYTES, FETCH_TIMEOUT_SECONDS, missing_queries
from service.cds.vocabulary import guide_vocabulary
from service.db.base import Database
from service.protocol import Step
from tests.support.cds import (
    PUBLIC_URL,
    Cds,
    Ehr,
    hook_body,
    make_cds_app,
    only_card,
    running_ehr,
    tenant_config,
)
from tests.support.processes import free_port
from tests.support.relay import SlowRelay
from tests.support.served import ServedJson, Trickled

pytestmark = pytest.mark.fhirserver


@pytest.fixture(scope="module")
def ehr() -> Iterator[Ehr]:
    yield from running_ehr()


@pytest.fixture(scope="module")
def fhir() -> Iterator[tuple[FhirServer, SeedResult]]:
    with FhirServer(log_traffic=True) as server:
        yield server, seed(server.base_url)


@pytest.fixture
def cds_on_fhir(
    database_url: str, database: Database, ehr: Ehr, fhir: tuple[FhirServer, SeedResult]
) -> Iterator[Cds]:
    app = make_cds_app(database_url, database)
    with TestClient(app, base_url=PUBLIC_URL) as client:
        harness = Cds(app, client, ehr, database)
        harness.configure(tenant_config(ehr, fhir_base_url=fhir[0].base_url))
        yield harness


AUTHORIZATION = {
    "access_token": "ehr-issued-token",
    "token_type": "Bearer",
    "expires_in": 300,
    "scope": "patient/*.rs",
    "subject": "kindreflex-cds",
}


def without_prefetch(fhir_server: str | None, patient: Any, **extra: Any) -> dict[str, Any]:
    body = hook_body(encounter_id=patient.arrived_encounter_id, **extra)
    body["context"]["patientId"] = patient.id
    del body["prefetch"]
    if fhir_server is not None:
        body |= {"fhirServer": fhir_server, "fhirAuthorization": AUTHORIZATION}
    return body


def fhir_log_lines(server: FhirServer) -> int:
    return sum(
        1
        for line in server.log_text().splitlines()
        if '"GET /fhir' in line or '"POST /fhir' in line
    )


def wait_for_log(server: FhirServer, lines: int) -> None:
    """The access log line is written just after the response; wait for it (with a deadline)."""
    deadline = time.monotonic() + 10
    while fhir_log_lines(server) < lines and time.monotonic() < deadline:
        time.sleep(0.02)  # polling a log file with a deadline, not synchronisation


@pytest.mark.parametrize(
    ("patient_key", "indicator", "reasons"),
    [
        ("jan-janssens", "warning", ["domestic-violence"]),
        ("lotte-claes", "warning", ["substance-abuse"]),  # the trigger is a Condition
        ("tom-wouters", "warning", ["self-harm-psychiatric"]),
        ("karim-el-amrani", "warning", ["open-concern"]),
        ("an-peeters", "info", []),
    ],
)
def test_without_prefetch_one_batch_request_gives_the_right_card(
    cds_on_fhir: Cds,
    fhir: tuple[FhirServer, SeedResult],
    patient_key: str,
    indicator: str,
    reasons: list[str],
) -> None:
    server, seeded = fhir
    before = fhir_log_lines(server)
    card = only_card(
        cds_on_fhir.call(body=without_prefetch(server.base_url, seeded.patient(patient_key)))
    )
    assert card["indicator"] == indicator
    assert json.loads(card["links"][0]["appContext"])["reasons"] == reasons
    assert cds_on_fhir.fhir_requests() == 1
    wait_for_log(server, before + 1)
    assert fhir_log_lines(server) == before + 1


def test_a_minor_from_the_fhir_server_gets_no_card(
    cds_on_fhir: Cds, fhir: tuple[FhirServer, SeedResult]
) -> None:
    server, seeded = fhir
    response = cds_on_fhir.call(
        body=without_prefetch(server.base_url, seeded.patient("noor-vermeulen"))
    )
    assert response.json() == {"cards": []}
    assert cds_on_fhir.fhir_requests() == 1


def test_only_the_missing_keys_are_fetched_still_in_one_request(
    cds_on_fhir: Cds, fhir: tuple[FhirServer, SeedResult]
) -> None:
    server, seeded = fhir
    patient = seeded.patient("jan-janssens")
    body = without_prefetch(server.base_url, patient)
    patient_resource = httpx.get(f"{server.base_url}/Patient/{patient.id}").json()
    body["prefetch"] = {"patient": patient_resource, "flags": None}  # null: "nothing there"
    card = only_card(cds_on_fhir.call(body=body))
    assert card["indicator"] == "warning"
    assert cds_on_fhir.fhir_requests() == 1


def test_a_prefetch_the_ehr_reports_as_failed_is_fetched_not_read_as_no_concern(
    cds_on_fhir: Cds, fhir: tuple[FhirServer, SeedResult]
) -> None:
    # CDS Hooks 2.0: a client may send an OperationOutcome where a prefetch query failed.
    server, seeded = fhir
    patient = seeded.patient("karim-el-amrani")  # an open concern from an earlier visit
    body = without_prefetch(server.base_url, patient)
    failed = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "Flag query"}],
    }
    body["prefetch"] = {
        "patient": httpx.get(f"{server.base_url}/Patient/{patient.id}").json(),
        "flags": failed,
    }
    card = only_card(cds_on_fhir.call(body=body))
    assert card["indicator"] == "warning"
    assert json.loads(card["links"][0]["appContext"])["reasons"] == ["open-concern"]
    assert cds_on_fhir.fhir_requests() == 1


def test_step_1_recorded_on_the_fhir_server_means_no_card(
    cds_on_fhir: Cds, fhir: tuple[FhirServer, SeedResult]
) -> None:
    server, seeded = fhir
    patient = seeded.patient("els-goossens")
    step_1 = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": guide_vocabulary().step_system, "code": Step.STEP_1.value}]},
        "subject": {"reference": f"Patient/{patient.id}"},
        "encounter": {"reference": f"Encounter/{patient.arrived_encounter_id}"},
    }
    assert httpx.post(f"{server.base_url}/Observation", json=step_1).status_code == 201
    response = cds_on_fhir.call(body=without_prefetch(server.base_url, patient))
    assert response.json() == {"cards": []}


def test_the_discovery_templates_work_for_a_real_ehr_client(
    cds_on_fhir: Cds, fhir: tuple[FhirServer, SeedResult]
) -> None:
    """The sandbox EHR's own prefetch code resolves our templates against sekmet."""
    server, seeded = fhir
    body = prefetched_by_the_sandbox_ehr(cds_on_fhir, server, seeded.patient("lotte-claes"))
    assert set(body["prefetch"]) == set(cds_on_fhir.discover().json()["services"][0]["prefetch"])
    card = only_card(
        cds_on_fhir.call(
            body=body | {"fhirServer": server.base_url, "fhirAuthorization": AUTHORIZATION}
        )
    )
    assert card["indicator"] == "warning"
    assert cds_on_fhir.fhir_requests() == 0  # everything came in prefetch


def prefetched_by_the_sandbox_ehr(cds: Cds, server: FhirServer, patient: Any) -> dict[str, Any]:
    """A hook body at the patient's arrived encounter whose prefetch the sandbox EHR's own
    code resolved from our discovery templates against the FHIR server."""
    templates = cds.discover().json()["services"][0]["prefetch"]
    context = {
        "userId": "Practitioner/nurse-1",
        "patientId": patient.id,
        "encounterId": patient.arrived_encounter_id,
    }

    async def fetch(query: str) -> dict[str, Any] | None:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{server.base_url}/{query}")
        return response.json() if response.status_code == 200 else None

    data = asyncio.run(compute_prefetch(templates, context, fetch))
    body = hook_body(data=data, encounter_id=patient.arrived_encounter_id)
    body["context"]["patientId"] = patient.id
    return body


def first_page_of_flags(server: FhirServer, patient: Any) -> dict[str, Any]:
    """The first page of the patient's Flags as a paging EHR may prefetch it: a Flag that is
    not the Kindreflex's, and a link to the next page."""
    search = f"{server.base_url}/Flag?patient={patient.id}&_count=1"
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [
            {"relation": "self", "url": search},
            {"relation": "next", "url": f"{search}&_offset=1"},
        ],
        "entry": [
            {
                "resource": {
                    "resourceType": "Flag",
                    "status": "active",
                    "code": {"text": "Valrisico"},
                    "subject": {"reference": f"Patient/{patient.id}"},
                },
                "search": {"mode": "match"},
            }
        ],
    }


def test_one_page_of_the_patients_flags_is_fetched_in_full_not_read_as_no_concern(
    cds_on_fhir: Cds, fhir: tuple[FhirServer, SeedResult]
) -> None:
    """The open concern may be on the next page: the Flags are asked again, all of them."""
    server, seeded = fhir
    patient = seeded.patient("karim-el-amrani")  # an open concern from an earlier visit
    body = prefetched_by_the_sandbox_ehr(cds_on_fhir, server, patient)
    body["prefetch"]["flags"] = first_page_of_flags(server, patient)
    body |= {"fhirServer": server.base_url, "fhirAuthorization": AUTHORIZATION}
    card = only_card(cds_on_fhir.call(body=body))
    assert card["indicator"] == "warning"
    assert json.loads(card["links"][0]["appContext"])["reasons"] == ["open-concern"]
    assert cds_on_fhir.fhir_requests() == 1


def test_a_server_paging_by_default_is_asked_for_all_the_patients_flags(
    cds_on_fhir: Cds, ehr: Ehr, fhir: tuple[FhirServer, SeedResult]
) -> None:
    """A FHIR server pages a search asking no page size (often by 10 to 50). Our one
    request asked none: a patient with more Flags than a page got the generic card ("the
    data could not be read"), and with an open concern on the second page no warning
    (found by review). It asks for ``FETCH_PAGE_SIZE``. The paging server is a real relay
    giving the real server a page size of 1 for each search asking none; the patient has
    two Flags that are not the Kindreflex's, and no reason for a warning."""
    server, seeded = fhir
    patient = seeded.patient("an-peeters")
    flags = [
        httpx.post(f"{server.base_url}/Flag", json=_flag(patient, text)).json()
        for text in ("Valrisico", "Allergie latex")
    ]
    try:
        with SlowRelay(server.base_url) as paging:
            paging.page_size = 1
            cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=paging.url))
            card = only_card(cds_on_fhir.call(body=without_prefetch(paging.url, patient)))
    finally:
        for flag in flags:
            httpx.delete(f"{server.base_url}/Flag/{flag['id']}")
    assert card["summary"] == "Doe de Kindreflex: vraag naar kinderen en ouderschap"
    assert cds_on_fhir.fhir_requests() == 1


def _flag(patient: Any, text: str) -> dict[str, Any]:
    return {
        "resourceType": "Flag",
        "status": "active",
        "code": {"text": text},
        "subject": {"reference": f"Patient/{patient.id}"},
    }


@pytest.mark.parametrize(("severity", "fetched"), [("error", 1), ("warning", 0)])
def test_a_flags_search_failed_in_part_is_fetched_not_read_as_no_concern(
    cds_on_fhir: Cds, fhir: tuple[FhirServer, SeedResult], severity: str, fetched: int
) -> None:
    """A search Bundle may carry the server's OperationOutcome (search mode ``outcome``):
    with an error, the search failed in part and an open concern may be missing. It was
    read as "no open concern" (found by review); it is fetched again. A warning (an
    unknown parameter ignored, say) leaves the search answered in full."""
    server, seeded = fhir
    patient = seeded.patient("karim-el-amrani")  # an open concern from an earlier visit
    body = prefetched_by_the_sandbox_ehr(cds_on_fhir, server, patient)
    flags = body["prefetch"]["flags"]
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": "too-costly"}],
    }
    body["prefetch"]["flags"] = {
        **flags,
        "entry": [{"resource": outcome, "search": {"mode": "outcome"}}]
        + ([] if severity == "error" else flags["entry"]),
    }
    body |= {"fhirServer": server.base_url, "fhirAuthorization": AUTHORIZATION}
    card = only_card(cds_on_fhir.call(body=body))
    assert card["indicator"] == "warning"
    assert json.loads(card["links"][0]["appContext"])["reasons"] == ["open-concern"]
    assert cds_on_fhir.fhir_requests() == fetched


def test_prefetch_about_another_patient_is_fetched_for_this_one(
    cds_on_fhir: Cds, fhir: tuple[FhirServer, SeedResult]
) -> None:
    """A key the EHR prefetched about another patient (a cache, a chart switched meanwhile)
    is left out and, with the EHR's FHIR server given, asked for this patient instead, in
    the one request. Read as sent, a minor's Patient record hid the open-concern card of
    Karim, and Karim's open concern gave An, who has none, a warning card."""
    server, seeded = fhir
    karim, an = seeded.patient("karim-el-amrani"), seeded.patient("an-peeters")
    body = prefetched_by_the_sandbox_ehr(cds_on_fhir, server, karim)
    body["prefetch"]["patient"] = prefetched_by_the_sandbox_ehr(
        cds_on_fhir, server, seeded.patient("noor-vermeulen")
    )["prefetch"]["patient"]
    body |= {"fhirServer": server.base_url, "fhirAuthorization": AUTHORIZATION}
    card = only_card(cds_on_fhir.call(body=body))
    assert json.loads(card["links"][0]["appContext"])["reasons"] == ["open-concern"]
    assert cds_on_fhir.fhir_requests() == 1

    body = prefetched_by_the_sandbox_ehr(cds_on_fhir, server, an)
    karims = prefetched_by_the_sandbox_ehr(cds_on_fhir, server, karim)["prefetch"]["flags"]
    body["prefetch"]["flags"] = karims
    body |= {"fhirServer": server.base_url, "fhirAuthorization": AUTHORIZATION}
    card = only_card(cds_on_fhir.call(body=body))
    assert card["summary"] == "Doe de Kindreflex: vraag naar kinderen en ouderschap"
    assert cds_on_fhir.fhir_requests() == 2


@pytest.mark.parametrize(
    ("patient_key", "in_full"),
    [("karim-el-amrani", "Doe de Kindreflex — aanleiding: open verontrusting"),
     ("an-peeters", "Doe de Kindreflex: vraag naar kinderen en ouderschap")],
)  # fmt: skip
def test_one_page_of_the_patients_flags_and_no_fhir_server_gives_the_generic_card(
    cds_on_fhir: Cds, fhir: tuple[FhirServer, SeedResult], patient_key: str, in_full: str
) -> None:
    """Without the rest of the Flags, neither the warning nor the plain card ("this patient
    is an adult: ask…") may be claimed: the generic card says the data could not be read."""
    server, seeded = fhir
    patient = seeded.patient(patient_key)
    body = prefetched_by_the_sandbox_ehr(cds_on_fhir, server, patient)
    assert only_card(cds_on_fhir.call(body=body))["summary"] == in_full
    body["prefetch"]["flags"] = first_page_of_flags(server, patient)
    card = only_card(cds_on_fhir.call(body=body))
    assert card["summary"] == "Doe de Kindreflex bij elke volwassen patiënt"
    assert cds_on_fhir.fhir_requests() == 0


def test_fhir_server_down_gives_the_generic_card(
    cds_on_fhir: Cds, ehr: Ehr, fhir: tuple[FhirServer, SeedResult]
) -> None:
    down = f"http://127.0.0.1:{free_port()}/fhir"
    cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=down))
    card = only_card(cds_on_fhir.call(body=without_prefetch(down, fhir[1].patient("jan-janssens"))))
    assert card["indicator"] == "info"
    assert card["summary"] == "Doe de Kindreflex bij elke volwassen patiënt"


def test_no_prefetch_and_no_fhir_server_gives_the_generic_card(
    cds_on_fhir: Cds, fhir: tuple[FhirServer, SeedResult]
) -> None:
    """A 200 with the generic card, not the 412 CDS Hooks 2.0 asks for: a deliberate
    deviation (issue 4; docs/architecture.md, "CDS cards")."""
    card = only_card(cds_on_fhir.call(body=without_prefetch(None, fhir[1].patient("jan-janssens"))))
    assert card["summary"] == "Doe de Kindreflex bij elke volwassen patiënt"
    assert "konden nu niet gelezen worden" in card["detail"]
    assert cds_on_fhir.fhir_requests() == 0


@pytest.mark.parametrize("sent", ["no prefetch, no FHIR server", "one page of flags, no token"])
def test_a_card_generic_for_want_of_prefetch_or_fhir_server_says_why_in_the_log(
    cds_on_fhir: Cds,
    fhir: tuple[FhirServer, SeedResult],
    ehr: Ehr,
    caplog: pytest.LogCaptureFixture,
    sent: str,
) -> None:
    """An EHR administrator seeing every card generic reads why: the hook, the registration
    and issuer, the prefetch keys left out and what the call lacks. Never the patient (nor
    the encounter). Nothing was logged before."""
    server, seeded = fhir
    patient = seeded.patient("karim-el-amrani")
    if sent == "no prefetch, no FHIR server":
        body = without_prefetch(None, patient)
        missing = ["patient", "encounter", "conditions", "relatedPersons", "flags", "findings"]
        lacks = ["fhirServer", "fhirAuthorization"]
    else:
        body = prefetched_by_the_sandbox_ehr(cds_on_fhir, server, patient)
        body["prefetch"]["flags"] = first_page_of_flags(server, patient)
        body["fhirServer"] = server.base_url  # without fhirAuthorization: no token to send
        missing, lacks = ["flags"], ["fhirAuthorization"]
    with caplog.at_level(logging.WARNING, logger="service.cds.router"):
        card = only_card(cds_on_fhir.call(body=body))
    assert card["summary"] == "Doe de Kindreflex bij elke volwassen patiënt"
    (logged,) = [r for r in caplog.records if r.name == "service.cds.router"]
    assert logged.levelno == logging.WARNING
    assert "the card may be generic" in logged.getMessage()
    assert logged.fields == {  # type: ignore[attr-defined]
        "hook": "encounter-start",
        "registration": "ehr",
        "issuer": ehr.issuer,
        "missing_prefetch": missing,
        "missing_access": lacks,
    }
    written = caplog.text + json.dumps(logged.fields)  # type: ignore[attr-defined]
    for identifier in (patient.id, patient.arrived_encounter_id):
        assert identifier
        assert identifier not in written


def test_the_token_is_only_sent_to_the_registered_fhir_server(
    cds_on_fhir: Cds, fhir: tuple[FhirServer, SeedResult], caplog: pytest.LogCaptureFixture
) -> None:
    """And the EHR administrator finds why every such card is generic in the log."""
    server, seeded = fhir
    before = fhir_log_lines(server)
    elsewhere = server.base_url.replace("127.0.0.1", "localhost")
    with caplog.at_level(logging.WARNING, logger="service.cds.router"):
        card = only_card(
            cds_on_fhir.call(body=without_prefetch(elsewhere, seeded.patient("jan-janssens")))
        )
    assert card["indicator"] == "info"
    assert cds_on_fhir.fhir_requests() == 0
    assert fhir_log_lines(server) == before
    assert "fhirServer is not the registered FHIR base" in caplog.text


def test_a_fhir_server_that_never_answers_gives_the_generic_card_in_time(
    cds_on_fhir: Cds, ehr: Ehr, fhir: tuple[FhirServer, SeedResult]
) -> None:
    """A real fault: a port that accepts connections but never answers (a hung server)."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        silent = f"http://127.0.0.1:{hung.getsockname()[1]}/fhir"
        cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=silent))
        started = time.monotonic()
        response = cds_on_fhir.call(body=without_prefetch(silent, fhir[1].patient("jan-janssens")))
        elapsed = time.monotonic() - started
    assert only_card(response)["summary"] == "Doe de Kindreflex bij elke volwassen patiënt"
    assert elapsed < FETCH_TIMEOUT_SECONDS + 5  # room for a loaded machine, not the answer


def _batch_answer(server: FhirServer, patient: Any) -> bytes:
    """The real FHIR server's answer to the batch the service sends for ``patient`` (what
    a slow or flooding server in front of it would send, slowly or padded)."""
    queries = missing_queries(guide_vocabulary(), None, patient.id, patient.arrived_encounter_id)
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": query}} for query in queries.values()],
    }
    return httpx.post(server.base_url, json=batch, timeout=10).content


def _prefetch_errors(caplog: pytest.LogCaptureFixture) -> list[Any]:
    """The error types the fallback's failures were logged with (and nothing else)."""
    return [
        getattr(r, "fields", {})
        for r in caplog.records
        if r.name == "service.cds.prefetch" and "fallback failed" in r.getMessage()
    ]


def test_a_batch_answer_trickled_past_the_deadline_gives_the_generic_card_in_time(
    cds_on_fhir: Cds,
    ehr: Ehr,
    fhir: tuple[FhirServer, SeedResult],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real answer (a warning for this patient), a byte every 0.05 s: each read comes
    well within the per-operation timeout. Before, the EHR waited for all of it (minutes)."""
    server, seeded = fhir
    patient = seeded.patient("jan-janssens")
    with Trickled(_batch_answer(server, patient), pause=0.05, path="/fhir") as slow:
        cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=slow.url))
        started = time.monotonic()
        response = cds_on_fhir.call(body=without_prefetch(slow.url, patient))
        elapsed = time.monotonic() - started

    assert only_card(response)["summary"] == "Doe de Kindreflex bij elke volwassen patiënt"
    assert elapsed < FETCH_TIMEOUT_SECONDS + 5  # room for a loaded machine, not the answer
    assert _prefetch_errors(caplog) == [{"error": "TimeoutError"}]


def test_a_batch_answer_larger_than_the_cap_gives_the_generic_card(
    cds_on_fhir: Cds,
    ehr: Ehr,
    fhir: tuple[FhirServer, SeedResult],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real answer (a warning for this patient) padded past the cap: not read into
    the CDS service's memory, the generic card instead. Within the cap it is read."""
    server, seeded = fhir
    patient = seeded.patient("jan-janssens")
    answer = _batch_answer(server, patient)
    padded = answer[:-1] + b" " * FETCH_MAX_BYTES + answer[-1:]
    with ServedJson(padded, path="/fhir") as flood:
        cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=flood.url))
        card = only_card(cds_on_fhir.call(body=without_prefetch(flood.url, patient)))
        assert card["summary"] == "Doe de Kindreflex bij elke volwassen patiënt"
        assert _prefetch_errors(caplog) == [{"error": "BodyTooLargeError"}]

        flood.body = answer
        card = only_card(cds_on_fhir.call(body=without_prefetch(flood.url, patient)))
        assert card["indicator"] == "warning"


def test_a_deeply_nested_batch_answer_gives_the_generic_card_not_a_500(
    cds_on_fhir: Cds,
    ehr: Ehr,
    fhir: tuple[FhirServer, SeedResult],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Within the size cap, an answer nested deeper than any parser's stack (the standard
    library's raised RecursionError, a 500 for the EHR)."""
    _, seeded = fhir
    deep = b'{"resourceType":"Bundle","entry":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with ServedJson(deep, path="/fhir") as nested:
        cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=nested.url))
        body = without_prefetch(nested.url, seeded.patient("jan-janssens"))
        response = cds_on_fhir.call(body=body)
        assert nested.accepted
    assert response.status_code == 200
    assert only_card(response)["summary"] == "Doe de Kindreflex bij elke volwassen patiënt"
    assert _prefetch_errors(caplog) == [{"error": "RecursionError"}]


def test_a_batch_answer_that_starts_with_a_byte_order_mark_is_read(
    cds_on_fhir: Cds, ehr: Ehr, fhir: tuple[FhirServer, SeedResult]
) -> None:
    """JSON may begin with one (RFC 8259 8.1: a parser MAY ignore it); a parser that refused
    it turned the card generic (found by review)."""
    server, seeded = fhir
    patient = seeded.patient("jan-janssens")
    with ServedJson(codecs.BOM_UTF8 + _batch_answer(server, patient), path="/fhir") as marked:
        cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=marked.url))
        card = only_card(cds_on_fhir.call(body=without_prefetch(marked.url, patient)))
    assert card["indicator"] == "warning"


@pytest.mark.parametrize(
    ("registered", "sent"),
    [
        # An EHR whose base is registered as its SMART ``iss`` writes it, capitals in the
        # host, and sends ``fhirServer`` the same way (the URL parser lowercased the host
        # of one side only: the generic card, and the log blamed the administrator)
        (("127.0.0.1", "LocalHost"), ("127.0.0.1", "LocalHost")),
        # ``/%66hir`` is ``/fhir`` (RFC 3986 6.2.2.2): the registered server
        (("", ""), ("/fhir", "/%66hir")),
    ],
    ids=["capitals-in-the-host", "a-letter-percent-encoded"],
)
def test_the_registered_fhir_server_written_another_way_is_asked(
    cds_on_fhir: Cds,
    ehr: Ehr,
    fhir: tuple[FhirServer, SeedResult],
    registered: tuple[str, str],
    sent: tuple[str, str],
) -> None:
    server, seeded = fhir
    patient = seeded.patient("jan-janssens")
    with ServedJson(_batch_answer(server, patient), path="/fhir") as copy:
        cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=copy.url.replace(*registered)))
        card = only_card(cds_on_fhir.call(body=without_prefetch(copy.url.replace(*sent), patient)))
        assert len(copy.accepted) == 1
    assert card["indicator"] == "warning"


def test_a_fhir_server_sent_with_a_user_name_gets_no_token(
    cds_on_fhir: Cds,
    ehr: Ehr,
    fhir: tuple[FhirServer, SeedResult],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The registered server, but a request to it would carry the name and password in
    place of the EHR's token (httpx): nothing is sent, the card is generic, the log says why.
    A FHIR base is registered without user-info (the admin refuses one)."""
    server, seeded = fhir
    patient = seeded.patient("jan-janssens")
    with ServedJson(_batch_answer(server, patient), path="/fhir") as copy:
        cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=copy.url))
        written = copy.url.replace("http://", "http://kindreflex:pw@")
        with caplog.at_level(logging.WARNING, logger="service.cds.router"):
            card = only_card(cds_on_fhir.call(body=without_prefetch(written, patient)))
        assert copy.accepted == []
    assert card["summary"] == "Doe de Kindreflex bij elke volwassen patiënt"
    assert "fhirServer has a user name or password" in caplog.text


def test_a_compressed_batch_answer_is_read_and_an_undecodable_one_gives_the_generic_card(
    cds_on_fhir: Cds,
    ehr: Ehr,
    fhir: tuple[FhirServer, SeedResult],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The real answer (a warning for this patient) through a gateway compressing it:
    brotli (not decoded here) gets the generic card; gzip is read. Before, both were
    parsed as sent."""
    server, seeded = fhir
    patient = seeded.patient("jan-janssens")
    answer = _batch_answer(server, patient)
    with ServedJson(answer, path="/fhir", encoding="br") as gateway:
        cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=gateway.url))
        card = only_card(cds_on_fhir.call(body=without_prefetch(gateway.url, patient)))
        assert card["summary"] == "Doe de Kindreflex bij elke volwassen patiënt"
        assert _prefetch_errors(caplog) == [{"error": "UndecodableBodyError"}]

        gateway.body, gateway.encoding = gzip.compress(answer), "gzip"
        card = only_card(cds_on_fhir.call(body=without_prefetch(gateway.url, patient)))
        assert card["indicator"] == "warning"
        assert gateway.accepted == ["gzip", "gzip"]


def _address_off_loopback() -> str:
    """This machine's own address on its network (not 127.x): an http URL naming it is not
    "on this machine only" by its name, though a listener here can see what reaches it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # a UDP "connect" only picks the route; nothing is sent
        address: str = probe.getsockname()[0]
    assert not address.startswith("127."), "this test needs a network interface besides lo"
    return address


def test_the_token_is_not_sent_in_clear_to_a_fhir_server_off_this_machine(
    cds_on_fhir: Cds, ehr: Ehr, fhir: tuple[FhirServer, SeedResult]
) -> None:
    """RFC 6750 sends bearer tokens over TLS only. The admin refuses such a base URL now;
    one stored before (loaded unchecked) gets the generic card, its server no request.
    Before, the EHR's token went there in clear."""
    server, seeded = fhir
    patient = seeded.patient("jan-janssens")
    answer = _batch_answer(server, patient)
    with ServedJson(answer, path="/fhir", host=_address_off_loopback()) as listener:
        cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=listener.url))
        card = only_card(cds_on_fhir.call(body=without_prefetch(listener.url, patient)))
        assert card["summary"] == "Doe de Kindreflex bij elke volwassen patiënt"
        assert listener.accepted == []
    with ServedJson(answer, path="/fhir") as on_this_machine:
        cds_on_fhir.configure(tenant_config(ehr, fhir_base_url=on_this_machine.url))
        card = only_card(cds_on_fhir.call(body=without_prefetch(on_this_machine.url, patient)))
        assert card["indicator"] == "warning"
        assert len(on_this_machine.accepted) == 1
