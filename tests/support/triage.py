"""The nurse's triage as the app wires it, for tests over a real FHIR server (one hospital,
a launched nurse session, the outbox), with what the tests read back of a save (through its
outbox entry, or by the Kindreflex profiles its resources claim); and a chart as a FHIR
server answers it, for servers that answer what sekmet will not."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

import httpx
import pytest

from sandbox.fhir_server import FhirServer
from sandbox.seed import SeedResult, seed
from service.db.base import Database, utcnow
from service.db.models import OutboxEntry
from service.fhir import terminology
from service.fhir.client import search_params
from service.outbox import Outbox
from service.protocol import (
    Child,
    ChildRelationship,
    HagueTrigger,
    LivesWith,
    SafetyAssessment,
    Step1Finding,
    Step2Finding,
    Step3Support,
    SupportAction,
)
from service.settings import Settings
from service.tenancy import TenantContext
from service.triage import Triage, TriageInput
from smart_app.session import AppUser, LaunchContext, NewSession, SessionStore, SessionTokens
from tests.support.sessions import launched_under
from tests.support.write_path import Clock, make_outbox, make_tenant, search


@dataclass
class World:
    """One hospital, its FHIR server and a launched nurse session, wired like the app."""

    database: Database
    tenant: TenantContext
    settings: Settings
    clock: Clock
    outbox: Outbox
    triage: Triage
    base_url: str

    def launch(self, patient_id: str, encounter_id: str | None, nurse: str) -> LaunchContext:
        user = AppUser(fhir_user=nurse, name="Sofie Maes", roles=frozenset({"nurse"}))
        store = SessionStore(self.database, self.settings)
        session_id, _secret = store.create(
            NewSession(
                tenant_id=self.tenant.id,
                registration_id="ehr",
                registration_fingerprint=launched_under(self.tenant, "ehr"),
                path_prefix="",
                fhir_base_url=self.base_url,
                token_endpoint="http://127.0.0.1:9/token",  # never called: the token is fresh
                user=user,
                language="nl",
                patient_id=patient_id,
                encounter_id=encounter_id,
                app_context=None,
                launch_details={},
                scope="launch openid fhirUser patient/*.rs patient/*.c",
                access_token="loopback",  # sekmet on loopback needs no token
                refresh_token=None,
                access_expires_at=utcnow() + timedelta(hours=1),
            )
        )
        return LaunchContext(
            session_id=session_id,
            tenant=self.tenant,
            registration_id="ehr",
            fhir_base_url=self.base_url,
            patient_id=patient_id,
            encounter_id=encounter_id,
            user=user,
            language="nl",
            app_context=None,
        )


def world_at(database: Database, base_url: str) -> World:
    """The hospital whose FHIR server is at ``base_url``, with the app's outbox and triage."""
    settings = Settings(environment="test", database_url="sqlite://")
    tokens = SessionTokens(database, settings)
    clock = Clock()
    outbox = make_outbox(database, clock, tokens=tokens)
    triage = Triage(database, outbox, tokens, timeout=5.0)
    tenant = make_tenant(database, "default", base_url)
    return World(database, tenant, settings, clock, outbox, triage, base_url)


@pytest.fixture(scope="module")
def seeded(fhir_server: FhirServer) -> SeedResult:
    """The sandbox's Flemish patients on the module's FHIR server."""
    return seed(fhir_server.base_url)


@pytest.fixture
def world(database: Database, fhir_server: FhirServer) -> World:
    """:func:`world_at` the module's FHIR server."""
    return world_at(database, fhir_server.base_url)


def conditional_creates(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, identifier search) of every conditional create in an outbox bundle (without
    the patient a child's create is also scoped to)."""
    return [
        (e["request"]["url"], search_params(e["request"]["ifNoneExist"])["identifier"])
        for e in bundle["entry"]
        if "ifNoneExist" in e["request"]
    ]


def outbox_entry(database: Database, outbox_id: int) -> OutboxEntry:
    with database.session() as session:
        entry = session.get(OutboxEntry, outbox_id)
        assert entry is not None
        return entry


def written_by_save(world: World, outbox_id: int) -> list[dict[str, Any]]:
    """Every resource the save wrote, read back from the FHIR server."""
    entry = outbox_entry(world.database, outbox_id)
    bundle = entry.bundle
    found = [
        resource
        for kind, identifier in conditional_creates(bundle)
        for resource in search(world.base_url, kind, identifier=identifier)
    ]
    for e in bundle["entry"]:  # updated children
        if "ifMatch" in e["request"]:
            found += search(world.base_url, "RelatedPerson", _id=e["resource"]["id"])
    # Provenance and AuditEvent have no identifier: found through the step 1 finding they
    # name (the entry's witness).
    (step,) = search(world.base_url, "Observation", identifier=witness_identifier(entry))
    step_ref = f"Observation/{step['id']}"
    found += search(world.base_url, "Provenance", target=step_ref)
    found += search(world.base_url, "AuditEvent", entity=step_ref)
    return found


def witness_identifier(entry: OutboxEntry) -> str:
    """The identifier a save's witness searches for (its step 1 finding's)."""
    assert entry.witness is not None
    return search_params(entry.witness.partition("?")[2])["identifier"]


def edit_first_child(
    ctx: LaunchContext, children: list[Child], name: str, page: str | None = None
) -> TriageInput:
    """A no-concern save in which the nurse renamed the first loaded child."""
    return no_concern(ctx, (replace(children[0], name=name), *children[1:]), page=page)


def no_concern(
    ctx: LaunchContext, children: tuple[Child, ...], page: str | None = None
) -> TriageInput:
    """A no-concern save of these children, with step 3's support, from ``page`` (the
    ``RecordedChart.page`` the children were shown on, when its waiting edits count)."""
    now = utcnow()
    author = ctx.user.fhir_user
    return TriageInput(
        page=page,
        step1=Step1Finding(recorded_by=author, recorded_at=now, children=children),
        step2=Step2Finding(
            recorded_by=author, recorded_at=now, assessment=SafetyAssessment.NO_CONCERN
        ),
        step3=Step3Support(
            recorded_by=author, recorded_at=now, actions=frozenset({SupportAction.ASK_REGULARLY})
        ),
    )


def child_aged(name: str, years: int) -> Child:
    """A new child (not yet on the server) of ``years`` and a month."""
    return Child(
        ref=f"urn:uuid:{uuid.uuid4()}",
        name=name,
        birth_date=date.today() - timedelta(days=365 * years + 30),
        relationship=ChildRelationship.CHILD,
        lives_with=LivesWith.PERMANENTLY,
    )


def niet_pluis(ctx: LaunchContext, children: tuple[Child, ...]) -> TriageInput:
    """Steps 1-2 for Jan Janssens: ``children``, niet-pluis for domestic violence."""
    now = utcnow()
    author = ctx.user.fhir_user
    return TriageInput(
        step1=Step1Finding(recorded_by=author, recorded_at=now, children=children),
        step2=Step2Finding(
            recorded_by=author,
            recorded_at=now + timedelta(seconds=20),
            assessment=SafetyAssessment.NIET_PLUIS,
            reasons=("Blauwe plekken bij de partner; kinderen waren erbij",),
            triggers=frozenset({HagueTrigger.DOMESTIC_VIOLENCE}),
        ),
    )


def _lives_with(code: str) -> dict[str, str]:
    return {"system": terminology.code_system_url("lives-with"), "code": code}


def served_chart(**child: Any) -> dict[str, Any]:
    """A searchset with the patient and one child, the child's elements replaced by ``child``."""
    related = {
        "resourceType": "RelatedPerson",
        "id": "c1",
        "meta": {"versionId": "1"},
        "patient": {"reference": "Patient/p1"},
        "extension": [
            {
                "url": terminology.extension_url("lives-with"),
                "valueCoding": _lives_with("permanently"),
            }
        ],
        "relationship": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "CHILD"}
                ]
            }
        ],
        "name": [{"text": "Emma"}],
        "birthDate": "2019-05-01",
        **child,
    }
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"text": "Moeder"}]}
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in (patient, {k: v for k, v in related.items() if v})],
    }


def resources_of(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of a Bundle's entries (an entry may have none)."""
    return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]


def written_by_kindreflex(fhir_base: str, patient_ref: str) -> dict[str, list[dict[str, Any]]]:
    """The patient's resources on the FHIR server that claim a Kindreflex profile, by type.

    Read from sekmet itself (no token needed on loopback).
    """
    queries = [
        f"RelatedPerson?patient={patient_ref}",
        f"Observation?subject={patient_ref}",
        # the save's Provenance names the Flag among its targets
        f"Flag?patient={patient_ref}&status=active&_revinclude=Provenance:target",
    ]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for query in queries:
        response = httpx.get(f"{fhir_base}/{query}", timeout=10)
        response.raise_for_status()
        for resource in resources_of(response.json()):
            if any("kindreflex" in p for p in resource.get("meta", {}).get("profile", [])):
                by_type.setdefault(resource["resourceType"], []).append(resource)
    return by_type
