"""`kindreflex demo` run again on the data of an earlier run (``.demo/``)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.db.base import utcnow
from service.db.models import Concern, OutboxEntry
from service.demo import DEMO_REGISTRATION_ID, _free_or_any, demo_stack
from service.outbox import NewEntry, enqueue
from service.tenancy import SecretBox, TenantDirectory
from tests.support.casework import index_case
from tests.support.processes import free_port


def test_the_port_of_a_run_stopped_a_moment_ago_is_taken_again() -> None:
    """Its connections wait out TIME_WAIT: probed without SO_REUSEADDR (uvicorn binds with
    it), the port looked taken and the EHR moved to another address (found by review)."""
    port = free_port()
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        with socket.create_connection(("127.0.0.1", port)) as client:
            served, _ = listener.accept()
            served.close()  # the server's side closes first: its port waits in TIME_WAIT
            client.recv(1)
    with socket.socket() as plain:  # the condition the run left: a bind without the option
        try:
            plain.bind(("127.0.0.1", port))
            waiting = False
        except OSError:
            waiting = True
    assert waiting

    assert _free_or_any(port) == port
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
        assert _free_or_any(port) == 0  # a port something listens on is left to it


def test_a_demo_restarted_with_its_ehr_elsewhere_keeps_its_cases_on_it(tmp_path: Path) -> None:
    """The same FHIR data behind another address (another port): the cases of the earlier
    run said they were recorded through another EHR, steps 4-6 closed to them, and a save
    still waiting could never be delivered (found by review). They follow the sandbox,
    none twice."""
    port = free_port()
    with demo_stack(port, data_dir=tmp_path, ehr_port=free_port()) as first:
        earlier = first.sandbox.fhir_base_url
        tenant = TenantDirectory(first.database, SecretBox(None)).get("default")
        waiting = NewEntry(
            kind="triage",
            registration_id=DEMO_REGISTRATION_ID,
            fhir_base_url=earlier,
            session_id="a-nurse-session",
            author="Practitioner/nurse",
            patient_ref="Patient/p1",
            bundle={"resourceType": "Bundle", "type": "transaction", "entry": []},
        )
        with first.database.session() as session:
            entry_id = enqueue(session, tenant.id, waiting).id
    with demo_stack(port, data_dir=tmp_path, ehr_port=free_port()) as second:
        now = second.sandbox.fhir_base_url
        with second.database.session() as session:
            cases = session.scalars(select(Concern.fhir_base_url)).all()
            entry = session.get(OutboxEntry, entry_id)
            assert entry is not None
            save_goes_to = entry.fhir_base_url

    assert now != earlier
    assert cases == [now]  # the seeded open concern, once, at the sandbox's address now
    assert save_goes_to == now


def test_a_demo_whose_earlier_runs_indexed_a_case_twice_still_starts(tmp_path: Path) -> None:
    """An earlier version indexed the seeded case again at each new address: the case of
    the address left can then not join the one already at the new address (one open case
    per patient and address) and stays where it is, the demo starting all the same."""
    port, first_ehr, second_ehr = free_port(), free_port(), free_port()
    with demo_stack(port, data_dir=tmp_path, ehr_port=first_ehr) as first:
        earlier = first.sandbox.fhir_base_url
        tenant = TenantDirectory(first.database, SecretBox(None)).get("default")
        with first.database.session() as session:
            (patient,) = session.scalars(select(Concern.patient_ref)).all()
        later = earlier.replace(f":{first_ehr}/", f":{second_ehr}/")
        index_case(first.database, tenant, patient, utcnow(), fhir_base_url=later)
    with demo_stack(port, data_dir=tmp_path, ehr_port=second_ehr) as second:
        assert second.sandbox.fhir_base_url == later
        with second.database.session() as session:
            cases = sorted(session.scalars(select(Concern.fhir_base_url)).all())

    assert cases == sorted([earlier, later])


def test_the_demo_runs_on_its_embedded_defaults_whatever_the_shell_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shell that exports a hospital's settings for ``serve``: the demo read them, and an
    allow-list naming the hospital's EHR refused the demo's own sandbox at every launch, a
    hospital's public URL sent the EHR's links elsewhere (found by review)."""
    settings_file = tmp_path / "hospital.env"
    settings_file.write_text("KINDREFLEX_CDS_JWT_REQUIRED=false\n")
    monkeypatch.setenv("KINDREFLEX_SETTINGS_FILE", str(settings_file))
    monkeypatch.setenv("KINDREFLEX_OUTBOUND_ALLOW", "ehr.az-gent.example")
    monkeypatch.setenv("KINDREFLEX_PUBLIC_URL", "https://kindreflex.az-gent.example")
    monkeypatch.setenv("KINDREFLEX_ENVIRONMENT", "production")
    port = free_port()
    with demo_stack(port, data_dir=tmp_path / "demo", ehr_port=free_port()) as stack:
        seeded = stack.sandbox.seed_result
        assert seeded is not None
        patient = next(iter(seeded.patients.values()))
        launch = stack.sandbox.launch_url(f"{stack.app_url}/launch", patient=patient.id)
        client = TestClient(stack.app, base_url=stack.app_url, follow_redirects=False)
        answer = client.get(launch.removeprefix(stack.app_url))

    assert answer.status_code in (302, 303), answer.text
    assert answer.headers["location"].startswith(stack.sandbox.authorize_url)
    assert stack.settings.cds_jwt_required  # nor did it read the settings file
