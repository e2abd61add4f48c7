"""What a FHIR server that is too slow means for the nurse and for the outbox, end to end.

The FHIR client ends a request at its deadline (``KINDREFLEX_FHIR_TIMEOUT_SECONDS``, the
whole exchange: ``test_fhir_client.py``). Here: the nurse's triage page over a FHIR server
trickling its answer; the social worker's case page over a server slow on every request,
whose reads end within the screen's budget; and a save whose transaction the real FHIR
server applied but whose answer came after the deadline (a real TCP relay in front of it
holds the answer back).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace

import httpx
import pytest
from fastapi.testclient import TestClient

from sandbox.fhir_server import FhirServer
from sandbox.seed import SeedResult, seed
from service import casework
from service.app import create_app
from service.db.base import Database
from service.fhir import terminology
from service.fhir.client import SCREEN_BUDGET_TIMEOUTS, FhirClient
from service.outbox import DeliveryState
from service.settings import Settings
from tests.support.casework import SOCIAL_WORKER, on_the_worklist, save_triage
from tests.support.relay import SlowRelay
from tests.support.served import Trickled
from tests.support.sessions import make_app, signed_in
from tests.support.triage import (
    conditional_creates,
    edit_first_child,
    outbox_entry,
    served_chart,
    world_at,
    written_by_save,
)
from tests.support.write_path import count, fhir_server, make_tenant, search

__all__ = ["fhir_server"]  # the fixture, shared with pytest

pytestmark = pytest.mark.fhirserver


def test_a_chart_trickled_past_the_deadline_is_not_loaded_and_the_page_comes_in_time(
    database_url: str, database: Database
) -> None:
    """The FHIR server sends the chart a byte every 0.05 s (a minute in all, each read well
    within the per-operation timeout). Before, the nurse's page waited for all of it; now
    it comes at the deadline, saying the children could not be loaded, the form usable."""
    answer = json.dumps(served_chart()).encode()
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
    assert elapsed < app.state.settings.fhir_timeout_seconds + 5  # the trickle: a minute


def test_a_case_page_over_a_server_slow_on_every_request_comes_within_the_screens_budget(
    database_url: str, database: Database, fhir_server: FhirServer
) -> None:
    """Every answer comes 0.8 of the timeout late: each request within it, the case page's
    four (its Flag, the chart, the findings, the referrals) 3.2 timeouts in all. Before, the
    page came when all had come, and a case whose searches ran to ten pages each held the
    social worker for minutes; now the page's reads end within their budget (three
    timeouts) and it says the FHIR server could not be read now."""
    timeout = 3.0  # each answer 0.6 s within it: room for a loaded machine
    with SlowRelay(fhir_server.base_url) as slow:
        settings = Settings(
            environment="test", database_url=database_url, fhir_timeout_seconds=timeout
        )
        app = create_app(settings, database)
        tenant = make_tenant(database, "default", slow.url)
        save_triage(app, tenant, slow.url)  # at once: the relay does not delay yet
        client, case_id = on_the_worklist(app, tenant, slow.url)
        slow.delay, asked = 0.8 * timeout, slow.asked
        started = time.monotonic()
        page = client.get(f"/social/cases/{case_id}")
        elapsed = time.monotonic() - started

    assert page.status_code == 200
    assert "De FHIR-server antwoordt niet" in page.text
    # each read was asked for and the budget ended the last (on a loaded machine the first
    # three may spend it all: the fourth is then not sent)
    assert 3 <= slow.asked - asked <= 4
    assert elapsed < SCREEN_BUDGET_TIMEOUTS * timeout + 1


@dataclass(frozen=True)
class SlowCase:
    """A case decided at step 4 through a slow relay (``slow``, not delaying yet), its
    findings (steps 1, 2 and 4) read a page each: the social worker's API and page."""

    slow: SlowRelay
    client: TestClient
    headers: dict[str, str]
    id: int
    row_version: int
    patient: str


@contextlib.contextmanager
def slow_long_case(
    database_url: str, database: Database, fhir_server: FhirServer, timeout: float
) -> Iterator[SlowCase]:
    with SlowRelay(fhir_server.base_url) as slow:
        settings = Settings(
            environment="test", database_url=database_url, fhir_timeout_seconds=timeout
        )
        app = create_app(settings, database)
        tenant = make_tenant(database, "default", slow.url)
        patient = save_triage(app, tenant, slow.url)
        worker = signed_in(app, tenant, SOCIAL_WORKER, "social-worker", fhir_base_url=slow.url)
        client = TestClient(app)
        (listed,) = client.get("/api/cases", headers=worker.headers).json()["items"]
        case = SlowCase(slow, client, worker.headers, listed["id"], listed["row_version"], patient)
        decided = decide(case, case.row_version)
        assert decided.status_code == 200, decided.text
        yield replace(case, row_version=decided.json()["row_version"])


def decide(case: SlowCase, row_version: int) -> httpx.Response:
    """The team's step 4: concerning, the parent willing."""
    body = {
        "row_version": row_version,
        "decision": "concerning-willing",
        "consultations": ["colleague"],
        "discussed_with_patient": True,
    }
    answer: httpx.Response = case.client.post(
        f"/api/cases/{case.id}/step-4", headers=case.headers, json=body
    )
    return answer


def test_a_long_case_over_a_slow_server_opens_with_the_pages_read_in_time(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every answer comes 0.55 of the timeout late, a finding a page (three pages): the
    Flag, the chart and the findings' first page come in time, their further pages would
    run past the budget. Before, the budget ran out on them and the page said the FHIR
    server does not answer, the case not shown at all (a long case on a slow server never
    opened). Now the findings' further pages stop a timeout before the budget ends, the
    referrals' search still comes, and the page shows the case saying its history is
    incomplete, within the budget."""
    timeout = 2.5  # each answer 1.1 s within it: room for a loaded machine
    monkeypatch.setattr(casework, "FINDINGS_PAGE_SIZE", 1)
    with slow_long_case(database_url, database, fhir_server, timeout) as case:
        case.slow.delay = 0.55 * timeout
        started = time.monotonic()
        page = case.client.get(f"/social/cases/{case.id}", headers=case.headers)
        elapsed = time.monotonic() - started

    assert page.status_code == 200
    assert 'id="history-incomplete"' in page.text
    assert "stuurde ze niet volledig op tijd" in page.text
    assert "De FHIR-server antwoordt niet" not in page.text
    assert re.search(r'<ol class="history">\s*<li>', page.text)  # the findings read, shown
    assert elapsed < SCREEN_BUDGET_TIMEOUTS * timeout + 1


def test_a_long_case_over_a_slow_server_is_changed_on_its_whole_history(
    database_url: str,
    database: Database,
    fhir_server: FhirServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same slow server and long case: the reads before a change need every page, which
    the screen's budget cannot hold (five requests of 0.55 timeout). Before, every change
    of the case was "the FHIR server does not answer": it could never be changed. Now the
    change reads it whole within the larger budget of a change: a second team decision
    (the first on a page the case page had no time for) is refused by the protocol, nothing
    written, and a follow-up (step 5) is saved."""
    timeout = 2.5  # each answer 1.1 s within it: room for a loaded machine
    monkeypatch.setattr(casework, "FINDINGS_PAGE_SIZE", 1)
    with slow_long_case(database_url, database, fhir_server, timeout) as case:
        case.slow.delay = 0.55 * timeout
        again = decide(case, case.row_version)
        body = {"row_version": case.row_version, "progress": "improving"}
        followed = case.client.post(f"/api/cases/{case.id}/step-5", headers=case.headers, json=body)

    assert again.status_code == 422, again.text  # the protocol saw the first decision
    assert followed.status_code == 200, followed.text
    assert followed.json()["status"] in ("delivered", "pending")
    step_4 = f"{terminology.code_system_url('kindreflex-step')}|step-4"
    assert len(search(fhir_server.base_url, "Observation", subject=case.patient, code=step_4)) == 1


class HeldAnswers:
    """A real TCP relay in front of a FHIR server. Requests are forwarded whole; while
    ``holding``, the answer to a POST (a transaction) is passed on a byte every 0.2 s, each
    well within the per-read timeout, so the client only gives up at its deadline: the
    server applied the transaction, the client never heard so. ``held`` is set once an
    answer was held back. A request is told apart by its first bytes (HTTP/1.1 without
    pipelining: a request starts a chunk once the answer before it came)."""

    def __init__(self, upstream_port: int) -> None:
        self.holding = True
        self.held = threading.Event()
        self._upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return  # closed: the test is over
            upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
            self._sockets += [downstream, upstream]
            posting = threading.Event()
            for pump in (
                threading.Thread(target=self._requests, args=(downstream, upstream, posting)),
                threading.Thread(target=self._answers, args=(upstream, downstream, posting)),
            ):
                pump.daemon = True
                self._threads.append(pump)
                pump.start()

    def _requests(
        self, source: socket.socket, sink: socket.socket, posting: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if chunk.startswith(b"POST "):
                    posting.set()
                elif chunk.split(b" ", 1)[0] in (b"GET", b"PUT", b"DELETE"):
                    posting.clear()
                sink.sendall(chunk)
        _close(source, sink)  # the client gave up (or is done): so is the relay

    def _answers(
        self, source: socket.socket, sink: socket.socket, posting: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                if self.holding and posting.is_set():
                    self.held.set()
                    for byte in chunk:  # applied upstream, trickled downstream
                        sink.sendall(bytes([byte]))
                        time.sleep(0.2)  # the fault itself, not synchronisation
                    continue
                sink.sendall(chunk)
        _close(source, sink)

    def __enter__(self) -> HeldAnswers:
        self._threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        _close(*self._sockets)
        for thread in self._threads:
            thread.join(timeout=5)


def _close(*sockets: socket.socket) -> None:
    for each in sockets:
        with contextlib.suppress(OSError):
            each.shutdown(socket.SHUT_RDWR)
        each.close()


@pytest.fixture(scope="module")
def seeded(fhir_server: FhirServer) -> SeedResult:
    return seed(fhir_server.base_url)


def test_a_transaction_answered_after_the_deadline_is_delivered_exactly_once(
    database: Database, fhir_server: FhirServer, seeded: SeedResult
) -> None:
    """The nurse edits a loaded child (an update with If-Match) and saves; the FHIR server
    applies the transaction, but its answer is held past the deadline. The save says
    "pending"; the outbox's next attempt finds the save's witness and records it delivered
    without sending it again: no second Observation, Provenance or AuditEvent, and no 412
    for the If-Match the first attempt already used."""
    with HeldAnswers(fhir_server.port) as relay:
        base_url = f"http://127.0.0.1:{relay.port}/fhir"
        world = world_at(database, base_url)
        patient = seeded.patient("els-goossens")
        ctx = world.launch(patient.id, patient.arrived_encounter_id, "Practitioner/nurse-slow")
        children = world.triage.load_chart(ctx).children  # GETs: answered
        child_id, version = children[0].ref.split("/")[1], int(children[0].ref.split("/")[3])

        renamed = f"Noor {uuid.uuid4().hex[:6]}"  # the module's server serves both databases
        started = time.monotonic()
        result = world.triage.record_triage(ctx, edit_first_child(ctx, children, renamed))
        elapsed = time.monotonic() - started

        assert relay.held.is_set()  # the transaction reached the server; its answer did not
        assert result.status == "pending"
        assert elapsed < 3 + 5  # the save's own attempt (3 s), not the held answer (minutes)
        assert "no whole answer within 3 s" in (
            outbox_entry(database, result.outbox_id).last_error or ""
        )
        relay.holding = False
        world.clock.advance(120)
        deliveries = [d for d in world.outbox.run_once() if d.entry_id == result.outbox_id]

    assert [(d.state, d.detail) for d in deliveries] == [
        (DeliveryState.DELIVERED, "applied earlier")
    ]
    world = replace(world, base_url=fhir_server.base_url)  # read back past the relay
    for kind, identifier in conditional_creates(outbox_entry(database, result.outbox_id).bundle):
        assert count(fhir_server.base_url, kind, identifier=identifier) == 1, kind
    kinds = Counter(r["resourceType"] for r in written_by_save(world, result.outbox_id))
    assert (kinds["Provenance"], kinds["AuditEvent"], kinds["RelatedPerson"]) == (1, 1, 1)
    with FhirClient(fhir_server.base_url, lambda: "loopback", 5.0) as client:
        after = client.read("RelatedPerson", child_id)
    assert int(after["meta"]["versionId"]) == version + 1  # one update, not two
    assert renamed in str(after["name"])
