"""``kindreflex demo``: the whole journey on localhost, with the embedded defaults.

It starts, and on Ctrl-C stops:

* the sandbox EHR (``sandbox/``): a real sekmet FHIR server process seeded with Flemish
  ED patients, a SMART authorization server, a FHIR facade and the EHR page that calls
  our CDS service and launches our app in an iframe;
* this service (environment ``demo``, SQLite under ``.demo/``), with a demo hospital
  whose configuration registers the sandbox: its FHIR facade as SMART ``iss``, our
  ``private_key_jwt`` client, its CDS Hooks JWT issuer and key URL, its page as frame
  origin.

The EHR page is served on ``localhost`` and the app on ``127.0.0.1``: two different
sites, so the iframe behaves as in a hospital (third-party cookies, frame-ancestors).
The sandbox is a development tool; ``service.cli`` imports this module only for ``demo``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import uvicorn
from fastapi import FastAPI
from sqlalchemy import select, update

from sandbox.config import SandboxConfig, SmartClient
from sandbox.runner import Sandbox
from sandbox.seed import SeededConcern, SeededPatient
from service import triage
from service.app import create_app
from service.db import migrate
from service.db.base import Database, insert_new
from service.db.models import Concern, OutboxEntry
from service.fhir import mapping
from service.fhir.client import FhirClient, Resource
from service.outbox import TransactionBuilder
from service.protocol import SafetyAssessment, Step1Finding, Step2Finding
from service.settings import Settings, embedded_settings
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import CdsIssuer, EhrRegistration, TenantConfiguration

__all__ = ["DEMO_CLIENT_ID", "DEMO_DIR", "DemoStack", "demo_stack", "run_demo", "serving"]

DEMO_DIR = Path(".demo")
DEMO_CLIENT_ID = "kindreflex-demo"
DEMO_REGISTRATION_ID = "sandbox"
DEMO_HOSPITAL = "Demo-ziekenhuis (sandbox)"


@dataclass(frozen=True)
class DemoStack:
    """Everything the demo started, and the URLs to open."""

    sandbox: Sandbox
    settings: Settings
    database: Database
    app: FastAPI

    @property
    def app_url(self) -> str:
        return self.settings.public_url


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def sandbox_registration(sandbox: Sandbox) -> EhrRegistration:
    """How the demo hospital knows the sandbox EHR (what an EHR administrator enters)."""
    return EhrRegistration(
        id=DEMO_REGISTRATION_ID,
        name="Sandbox-EPD",
        fhir_base_url=sandbox.fhir_base_url,
        client_id=DEMO_CLIENT_ID,
        client_auth="private_key_jwt",
        cds_issuers=[CdsIssuer(iss=sandbox.issuer, jku=[sandbox.jwks_url])],
        frame_origins=[_origin(sandbox.ehr_url)],
    )


def _register(tenants: TenantDirectory, slug: str, registration: EhrRegistration) -> str | None:
    """Save the demo hospital's configuration when it differs (ports change per run); the
    sandbox's FHIR base of the run before when it was another."""
    wanted = TenantConfiguration(name=DEMO_HOSPITAL, registrations=[registration])
    before = tenants.get(slug).config if slug in tenants.slugs() else None
    if before == wanted:
        return None
    tenants.save(slug, wanted, actor="kindreflex demo")
    moved = [
        r.fhir_base_url for r in (before.registrations if before else []) if r.id == registration.id
    ]
    return next((base for base in moved if base != registration.fhir_base_url), None)


def _follow_the_sandbox(database: Database, tenant_id: int, before: str, now: str) -> None:
    """The cases and saves of a run with the sandbox at another address (another port: the
    same FHIR data) go on at this one. Left at the old one, every case of the earlier run
    said it was recorded through another EHR, steps 4-6 closed to it, and a waiting save
    could never be delivered (found by review). An open case of a patient who has one at
    this address already (two runs of an earlier version each indexed it) stays where it
    is: one open case per patient and address, and the demo must start."""
    open_here = select(Concern.patient_ref).where(
        Concern.tenant_id == tenant_id, Concern.fhir_base_url == now, Concern.status == "open"
    )
    with database.session() as session:
        session.execute(
            update(Concern)
            .where(Concern.tenant_id == tenant_id, Concern.fhir_base_url == before)
            .where(~((Concern.status == "open") & Concern.patient_ref.in_(open_here)))
            .values(fhir_base_url=now)
        )
        session.execute(
            update(OutboxEntry)
            .where(OutboxEntry.tenant_id == tenant_id, OutboxEntry.fhir_base_url == before)
            .values(fhir_base_url=now)
        )


def _record_seeded_concerns(
    database: Database, tenant_id: int, fhir_base_url: str, sandbox: Sandbox
) -> None:
    """The sandbox seeds a patient with an open concern from an earlier visit (its Flag):
    record that visit's steps 1 and 2 as the app wrote them, and put the concern on the
    worklist as the app indexed it, from its Flag (``triage.concern_index_row``). Else the
    CDS card warns of a concern the social service cannot see, its case has no history to
    go on from, and a new niet-pluis for the patient adds a second Flag. Conditional creates
    and the index's unique keys: a restarted demo adds nothing."""
    rows = []
    # the sandbox's FHIR server itself, behind its facade: it asks no token
    with FhirClient(sandbox.upstream_fhir_base_url, lambda: "unused", 10.0) as client:
        for patient in sandbox.seeded.patients.values():
            if patient.concern is None:
                continue
            client.transaction(_earlier_visit(client, patient, patient.concern))
            (flag_id,) = patient.flag_ids
            concern = mapping.open_concern_of(client.read("Flag", flag_id))
            assert concern is not None, "the sandbox seeds an open Kindreflex concern"
            row = triage.concern_index_row(
                concern,
                tenant_id=tenant_id,
                fhir_base_url=fhir_base_url,
                patient_ref=f"Patient/{patient.id}",
                patient_name=patient.name,
                children_birth_dates=patient.concern.children_birth_dates,
            )
            rows.append(row)
    with database.session() as session:
        insert_new(session, Concern, rows)


def _earlier_visit(client: FhirClient, patient: SeededPatient, concern: SeededConcern) -> Resource:
    """The transaction of the earlier visit's steps 1 and 2 (niet-pluis), as the app wrote it."""
    children = tuple(
        replace(child, ref=f"RelatedPerson/{person_id}")
        for person_id in patient.related_person_ids
        if (child := mapping.child_from_related_person(client.read("RelatedPerson", person_id)))
    )
    encounter = f"Encounter/{concern.encounter_id}" if concern.encounter_id else None
    step1 = Step1Finding(
        recorded_by=concern.flagged_by,
        recorded_at=concern.flagged_at - timedelta(minutes=5),
        encounter_ref=encounter,
        children=children,
    )
    step2 = Step2Finding(
        recorded_by=concern.flagged_by,
        recorded_at=concern.flagged_at,  # the Flag's start: the hand-off
        encounter_ref=encounter,
        assessment=SafetyAssessment.NIET_PLUIS,
        reasons=("Blauwe plekken bij de dochter; de patiënt ontwijkt vragen over thuis",),
    )
    tx = TransactionBuilder()
    for finding in (step1, step2):
        key = f"{concern.flag_identifier}/{finding.step.value}"
        identifier = mapping.identifier("finding", uuid.uuid5(uuid.NAMESPACE_URL, key))
        resource = mapping.finding_observation(
            finding,
            patient_ref=f"Patient/{patient.id}",
            encounter_ref=encounter,
            child_refs={child.ref: child.ref for child in children},
            identifier=identifier,
        )
        tx.create(resource, identifier)
    return tx.bundle()


@contextlib.contextmanager
def demo_stack(port: int, data_dir: Path = DEMO_DIR, ehr_port: int = 0) -> Iterator[DemoStack]:
    """Start the sandbox and build our app (not yet serving); stop the sandbox on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    app_url = f"http://127.0.0.1:{port}"
    settings = embedded_settings(
        environment="demo",
        database_url=f"sqlite:///{data_dir.resolve() / 'kindreflex.db'}",
        public_url=app_url,
        port=port,
    )
    migrate.upgrade(settings.database_url)
    database = Database.of(settings)
    # built first: it sets where the process may connect, for the seeding's FHIR client too
    app = create_app(settings, database)
    client = SmartClient(
        DEMO_CLIENT_ID,
        (f"{app_url}/callback",),
        jwks_uri=f"{app_url}/.well-known/jwks.json",
        name="Kindreflex",
    )
    config = SandboxConfig(
        cds_base_url=app_url,
        app_launch_url=f"{app_url}/launch",
        clients=(client,),
        ehr_port=ehr_port,
        public_host="localhost",
        data_dir=data_dir.resolve() / "fhir",  # the seeded hospital survives a restart
        auto_consent=True,  # a hospital approves the app once; nurses see no consent page
    )
    try:
        with Sandbox.start(config) as sandbox:
            tenants = TenantDirectory(database, SecretBox(settings.secret_key))
            registration = sandbox_registration(sandbox)
            before = _register(tenants, settings.default_tenant, registration)
            hospital = tenants.get(settings.default_tenant)
            if before is not None:
                _follow_the_sandbox(database, hospital.id, before, registration.fhir_base_url)
            _record_seeded_concerns(database, hospital.id, registration.fhir_base_url, sandbox)
            yield DemoStack(sandbox, settings, database, app)
    finally:
        database.dispose()


@contextlib.contextmanager
def serving(app: FastAPI, port: int, deadline_s: float = 15.0) -> Iterator[uvicorn.Server]:
    """Serve ``app`` on 127.0.0.1:``port`` from a thread (tests); stopped on exit."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="kindreflex-app", daemon=True)
    thread.start()
    give_up = time.monotonic() + deadline_s
    try:
        while not server.started:  # readiness probe with a deadline, not synchronisation
            if not thread.is_alive() or time.monotonic() > give_up:
                raise RuntimeError(f"the Kindreflex app did not start on port {port}")
            time.sleep(0.01)
        yield server
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)


def _print_urls(stack: DemoStack) -> None:
    sandbox, app_url = stack.sandbox, stack.app_url
    lines = [
        "Kindreflex-ED demo is running. Open:",
        f"  1. the sandbox EHR (start here):   {sandbox.ehr_url}/",
        "     pick a patient, start the triage, follow the card's link",
        f"  2. the CDS Hooks discovery:        {app_url}/cds-services",
        "     (called by the EHR with its signed JWT; a browser gets 401 invalid_token)",
        "  3. the social service's worklist: in the sandbox EHR, choose Pieter Jacobs",
        "     (social-worker), Wissel gebruiker, Werklijst sociale dienst (Kindreflex)",
        f"  FHIR server (sandbox facade):      {sandbox.fhir_base_url}",
        f"  data of this demo:                 {DEMO_DIR.resolve()}",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)


def _free_or_any(port: int) -> int:
    """``port`` when nothing listens there, else 0 (any free port): the demo must start.
    Probed as uvicorn binds (``SO_REUSEADDR``): the connections of a run stopped a moment
    ago, waiting out TIME_WAIT, made the port look taken, and the EHR moved to another
    address (found by review)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


def run_demo(port: int) -> int:
    """Run the demo until Ctrl-C or SIGTERM; everything it started is stopped on the way out."""
    # SIGTERM (`kill`, a process manager) as Ctrl-C: uvicorn passes the signal on to the
    # handler it found, and Python's default for SIGTERM ended the process before the
    # sandbox was stopped, the FHIR server left running (found by review).
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # Each migration would log a line: keep the terminal for the URLs (httpx's request lines
    # are quiet already, see service.observability).
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # The EHR next to the app (8001 for 8000), so the URLs stay the same between runs.
    with demo_stack(port, ehr_port=_free_or_any(port + 1)) as stack:
        server = uvicorn.Server(
            uvicorn.Config(stack.app, host="127.0.0.1", port=port, log_config=None)
        )
        thread = threading.Thread(target=lambda: _print_when_started(server, stack), daemon=True)
        thread.start()
        # uvicorn stops on Ctrl-C / SIGTERM and then re-raises the signal: that
        # KeyboardInterrupt is the normal way out, after which the sandbox is stopped.
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
    return 0


def _print_when_started(server: uvicorn.Server, stack: DemoStack) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.05)  # waits for uvicorn's readiness flag; only prints
    if server.started:
        _print_urls(stack)
