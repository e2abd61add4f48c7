"""The "test connection" against real servers: the sandbox EHR, a plain FHIR server, nothing.

No server is faked: the sandbox EHR (SMART authorization server + FHIR facade over a
sekmet process), a bare sekmet process (SMART Backend Services only, no user launch), a
path where nothing FHIR answers, and a port where nothing listens; and, for answers a
real server will not give, a loopback server trickling its answer or sending too much.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from sandbox.fhir_server import FhirServer
from sandbox.runner import Sandbox
from service.admin import access, connection
from service.admin.connection import ANSWER_BOUNDS, ConnectionReport, check_connection
from service.app import create_app
from service.bounded_fetch import Bounds
from service.db.base import Database
from service.settings import load_settings
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import EhrRegistration, TenantConfiguration
from service.triage import CHART_REVINCLUDES
from tests.support.processes import free_port
from tests.support.sandbox import running_sandbox
from tests.support.served import ServedJson, Trickled

pytestmark = pytest.mark.fhirserver


def registration(iss: str) -> EhrRegistration:
    return EhrRegistration(id="ehr", name="EPD", fhir_base_url=iss, client_id="kindreflex")


def outcome(report: ConnectionReport) -> dict[str, bool]:
    return {check.id: check.ok for check in report.checks}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as running:
        yield running


@pytest.fixture(scope="module")
def plain_fhir() -> Iterator[FhirServer]:
    with FhirServer() as server:
        yield server


def test_the_sandbox_ehr_has_everything_kindreflex_needs(sandbox: Sandbox) -> None:
    report = check_connection(registration(sandbox.fhir_base_url), "nl", timeout_seconds=5)
    assert report.ready, [c.message for c in report.checks if not c.ok]
    assert outcome(report) == {
        "smart_configuration": True,
        "launch_ehr": True,
        "authorization_code": True,
        "pkce_s256": True,
        "private_key_jwt": True,
        "registration_scopes": True,
        "context_ehr_encounter": True,
        "openid_fhiruser": True,
        "launch_standalone": True,
        "capability_statement": True,
        "fhir_r4": True,
        "refresh_tokens": True,
        "answers_told_apart": True,
        "transaction": True,
        "write_resources": True,
        "update_resources": True,
        "read_resources": True,
        "vread_resources": True,
        "conditional_create": True,
        "versioned_update": True,
        "chart_revinclude": True,
    }
    messages = {check.id: check.message for check in report.checks}
    assert messages["launch_ehr"] == "Starten vanuit het EPD (launch-ehr) wordt ondersteund."
    assert messages["fhir_r4"] == "FHIR-versie 4.0.1 (R4)."


def test_an_ehr_that_does_not_name_itself_is_told_apart_only_by_an_own_redirect_uri(
    sandbox: Sandbox,
) -> None:
    """Found by review (RFC 9700 4.4.1): at the shared /callback, the answers of an EHR
    that does not name itself (RFC 9207) can be taken over by another registered EHR. The
    test says so, and what to do, until the registration has its own redirect URI; it is
    no reason to call the EHR not ready (with one EHR installed there is none to fear)."""
    sandbox.auth.config.names_itself = False
    try:
        shared = check_connection(registration(sandbox.fhir_base_url), "en", timeout_seconds=5)
        own = registration(sandbox.fhir_base_url).model_copy(update={"own_redirect_uri": True})
        told_apart = check_connection(own, "en", timeout_seconds=5)
    finally:
        sandbox.auth.config.names_itself = True
    assert shared.ready
    (check,) = [c for c in shared.checks if c.id == "answers_told_apart"]
    assert (check.ok, check.needed) == (False, False)
    assert "own redirect URI (/callback/<hospital>/ehr) at the EHR and set " \
        "own_redirect_uri: true" in check.message  # fmt: skip
    assert outcome(told_apart)["answers_told_apart"]


def test_a_fhir_server_without_user_launch_is_not_ready_and_says_why(
    plain_fhir: FhirServer,
) -> None:
    # sekmet publishes a SMART configuration for Backend Services (client_credentials)
    # only: the FHIR side is fine, the launch of an app by a user is missing.
    report = check_connection(registration(plain_fhir.base_url), "en", timeout_seconds=5)
    assert not report.ready
    result = outcome(report)
    assert result["capability_statement"]
    assert result["write_resources"]
    assert not result["launch_ehr"]
    assert not result["authorization_code"]
    assert not result["context_ehr_encounter"]
    missing = [c.message for c in report.checks if c.needed and not c.ok]
    assert "Launching from the EHR (launch-ehr) is missing: nurses cannot open the app from " \
        "the card." in missing  # fmt: skip


def test_no_smart_configuration_and_no_fhir_server_is_said_plainly(
    plain_fhir: FhirServer,
) -> None:
    nothing_here = plain_fhir.base_url.replace("/fhir", "/no-fhir-here")
    report = check_connection(registration(nothing_here), "nl", timeout_seconds=5)
    assert [(c.id, c.ok) for c in report.checks] == [
        ("smart_configuration", False),
        ("capability_statement", False),
    ]
    assert report.checks[0].message == (
        "Geen SMART-configuratie gevonden (HTTP 404): het EPD kan de app niet starten."
    )


def test_an_unreachable_ehr_is_reported_not_raised() -> None:
    silent = f"http://127.0.0.1:{free_port()}/fhir"
    report = check_connection(registration(silent), "fr", timeout_seconds=2)
    assert not report.ready
    assert report.checks[0].message == (
        "Aucune configuration SMART trouvée (serveur injoignable) : "
        "le DPI ne peut pas lancer l'application."
    )


def capability_statement(size: int) -> bytes:
    """A CapabilityStatement of the sandbox's kind, padded to ``size`` bytes."""
    resources = [{"type": "Patient", "interaction": [{"code": "read"}]}]
    statement = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1",
                 "rest": [{"mode": "server", "resource": resources}]}  # fmt: skip
    body = json.dumps(statement).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def test_an_ehr_trickling_its_answers_is_reported_within_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each byte well within the per-read timeout, each answer in half a minute: both
    fetches end at the deadline (shortened here to one second) and the report says so."""
    monkeypatch.setattr(connection, "ANSWER_BOUNDS", Bounds(1.0, ANSWER_BOUNDS.max_bytes))
    body = capability_statement(300)
    with Trickled(body, pause=30 / len(body), path="/fhir") as slow:
        started = time.monotonic()
        report = check_connection(registration(slow.url), "nl", timeout_seconds=5)
        assert time.monotonic() - started < 2 * 1.0 + 5  # each answer: 30 s
    assert [(c.id, c.ok) for c in report.checks] == [
        ("smart_configuration", False),
        ("capability_statement", False),
    ]
    assert report.checks[1].message == (
        "De FHIR-server antwoordt niet met een CapabilityStatement "
        "(geen volledig antwoord binnen 1 s)."
    )


def test_an_answer_past_the_size_limit_is_reported_and_a_large_one_is_read() -> None:
    """A large EHR's CapabilityStatement approaches 1 MiB: read whole. One past the limit
    (4 MiB) is not read further, and the report says so."""
    assert ANSWER_BOUNDS.max_bytes == 4 * 1024 * 1024
    with ServedJson(capability_statement(1024 * 1024), path="/fhir") as large:
        report = check_connection(registration(large.url), "en", timeout_seconds=5)
        assert outcome(report)["capability_statement"]
        large.body = capability_statement(ANSWER_BOUNDS.max_bytes + 1)
        report = check_connection(registration(large.url), "en", timeout_seconds=5)
    assert not outcome(report)["capability_statement"]
    messages = {check.id: check.message for check in report.checks}
    assert messages["capability_statement"] == (
        "The FHIR server does not answer with a CapabilityStatement "
        "(the answer is larger than 4 MiB)."
    )
    assert messages["smart_configuration"] == (
        "No SMART configuration found (the answer is larger than 4 MiB): "
        "the EHR cannot launch the app."
    )


def test_the_admin_api_runs_the_test_and_records_it(
    plain_fhir: FhirServer, database: Database, database_url: str
) -> None:
    settings = load_settings(database_url=database_url, environment="test", secret_key="k")
    tenants = TenantDirectory(database, SecretBox(SecretStr("k")))
    config = TenantConfiguration(name="AZ", registrations=[registration(plain_fhir.base_url)])
    context = tenants.save(settings.default_tenant, config, actor="set-up")
    token, _ = access.issue_bootstrap_token(database, context.id)
    session = access.redeem_bootstrap_token(database, context.id, token, "Els")
    headers = {"Authorization": f"Bearer {session.token}", "Accept-Language": "fr-BE"}

    with TestClient(create_app(settings, database)) as client:
        response = client.post("/admin/api/registrations/ehr/test-connection", headers=headers)
        assert response.status_code == 200
        body = response.json()
        assert body["ready"] is False
        assert body["checks"][0]["message"] == "La configuration SMART du DPI a été trouvée."
        unknown = client.post("/admin/api/registrations/nope/test-connection", headers=headers)
        assert unknown.status_code == 404

    recorded = [e for e in access.events(database, context.id) if e.action == "test-connection"]
    assert len(recorded) == 1
    assert recorded[0].detail == {"registration": "ehr", "iss": plain_fhir.base_url, "ready": False}


def test_a_compressed_answer_is_read_and_an_undecodable_one_reported() -> None:
    """An EHR (or its gateway) compressing its answers: gzip is read; brotli, not decoded
    here, is reported as such. Before, both were read as the answer: not JSON."""
    statement = capability_statement(300)
    with ServedJson(statement, path="/fhir", encoding="br") as served:
        report = check_connection(registration(served.url), "en", timeout_seconds=5)
        served.body, served.encoding = gzip.compress(statement), "gzip"
        assert outcome(check_connection(registration(served.url), "en", timeout_seconds=5))[
            "capability_statement"
        ]
    messages = {check.id: check.message for check in report.checks}
    assert messages["capability_statement"] == (
        "The FHIR server does not answer with a CapabilityStatement "
        "(the answer's compression cannot be decoded)."
    )


def test_members_of_the_wrong_kind_are_ignored_and_named_not_raised() -> None:
    """Before, ``capabilities: [{}]`` raised a TypeError (set() of a dict), ``rest: ["x"]``
    and ``interaction: "read"`` an AttributeError: a 500 instead of the report. One answer
    served as both the SMART configuration and the CapabilityStatement."""
    answer = {
        "authorization_endpoint": "https://ehr.example/authorize",
        "capabilities": [{}, "launch-ehr", ["context-ehr-encounter"]],
        "grant_types_supported": "authorization_code",
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": ["x", {"resource": [
            "Patient",
            {"type": "Patient", "interaction": "read"},
            {"type": "Encounter", "interaction": [{"code": ["read"]}, {"code": "read"}, 7]},
        ]}],
    }  # fmt: skip
    with ServedJson(json.dumps(answer).encode(), path="/fhir") as served:
        report = check_connection(registration(served.url), "en", timeout_seconds=5)
    found = outcome(report)
    assert (found["launch_ehr"], found["authorization_code"]) == (True, False)
    assert (found["context_ehr_encounter"], found["read_resources"]) == (False, False)
    messages = {check.id: check.message for check in report.checks}
    assert messages["read_resources"] == (
        "The server does not let us read these resources: Patient, Condition."
    )
    assert messages["smart_configuration_members"] == (
        "The EHR's SMART configuration has members of the wrong kind, ignored: "
        "capabilities[0], capabilities[2], grant_types_supported."
    )
    assert messages["capability_statement_members"] == (
        "The CapabilityStatement has members of the wrong kind, ignored: rest[0], "
        "rest[1].resource[0], rest[1].resource[1].interaction, "
        "rest[1].resource[2].interaction[2], rest[1].resource[2].interaction[0].code."
    )
    ignored = [c for c in report.checks if c.id.endswith("_members")]
    assert not any(check.needed for check in ignored)


def test_a_server_that_cannot_make_every_write_of_a_case_is_not_ready() -> None:
    """Before, the check asked only for the creates of a triage save: a server that could
    not update a child, a referral or the concern Flag, nor create a referral's partner
    organisation or the audit event every save carries, was "ready", and those saves were
    refused later. An EHR without refresh tokens is only said so: saves still go, late."""
    every = [{"code": code} for code in ("read", "vread", "search-type", "create", "update")]
    resources = [
        {"type": kind, "interaction": every}
        for kind in ("Patient", "Encounter", "Condition", "RelatedPerson", "Observation",
                     "ServiceRequest", "Provenance", "AuditEvent")
    ] + [{"type": "Flag", "interaction": [{"code": "read"}, {"code": "create"}]}]  # fmt: skip
    report = _checked_ehr(resources)
    assert not report.ready
    missing = {c.id: c.message for c in report.checks if not c.ok}
    assert missing == {
        "write_resources": "The server cannot create these resources: Organization.",
        "conditional_create": "The server declares no conditional create (conditionalCreate) "
        "for: Organization. A save sent again may then create them twice.",
        "update_resources": "The server cannot update these resources: Flag. A changed "
        "child, a referral's status or the concern flag is then not saved.",
        "refresh_tokens": "No refresh tokens (offline_access): what was not yet sent when "
        "the session ends waits until someone opens the app for that patient again.",
    }
    nice_to_have = ["launch_standalone", "refresh_tokens", "answers_told_apart"]
    assert [c.id for c in report.checks if not c.needed] == nice_to_have


def test_a_server_that_could_save_twice_or_overwrite_unawares_is_not_ready() -> None:
    """Every save is one transaction; its creates are conditional on a business identifier
    (a save sent again after a timeout creates nothing twice) and its updates carry
    If-Match (two users do not overwrite each other). A server that declares none of it
    was "ready", and would refuse every save, or duplicate and overwrite findings."""
    every = [{"code": code} for code in ("read", "vread", "search-type", "create", "update")]
    resources = [
        {"type": kind, "interaction": every, "versioning": "versioned"}
        for kind in ("Patient", "Encounter", "Condition", "RelatedPerson", "Observation",
                     "ServiceRequest", "Organization", "Flag", "Provenance", "AuditEvent")
    ]  # fmt: skip
    report = _checked_ehr(resources, conditional=False, transaction=False)
    assert _why_not_ready(report) == {
        "transaction": "The server takes no transactions (interaction transaction): "
        "Kindreflex saves each step as one transaction and can then save nothing.",
        "conditional_create": "The server declares no conditional create (conditionalCreate) "
        "for: RelatedPerson, Observation, ServiceRequest, Organization, Flag. A save sent "
        "again may then create them twice.",
        "versioned_update": "The server declares no versioned update (versioning "
        "versioned-update, If-Match) for: RelatedPerson, ServiceRequest, Flag. Two users may "
        "then overwrite each other's change unawares.",
    }


def test_a_server_that_cannot_read_the_version_a_nurse_corrected_is_not_ready() -> None:
    """A merge update (a child the record held, corrected by the nurse) is laid over the
    version she saw, read at delivery as ``RelatedPerson/{id}/_history/{version}``, a vread,
    which R4 declares apart from read. A server declaring read, create and versioned
    update but no vread was "ready", and then refused every such save, which the outbox
    marked failed for good (found by review)."""
    without_vread = [{"code": code} for code in ("read", "search-type", "create", "update")]
    resources = [
        {"type": kind, "interaction": without_vread}
        for kind in ("Patient", "Encounter", "Condition", "RelatedPerson", "Observation",
                     "ServiceRequest", "Organization", "Flag", "Provenance", "AuditEvent")
    ]  # fmt: skip
    report = _checked_ehr(resources)
    assert _why_not_ready(report) == {
        "vread_resources": "The server declares no read of a version (interaction vread) "
        "for: RelatedPerson. A child already on the record, corrected by the nurse, is then "
        "never saved."
    }


def test_a_server_whose_patient_search_includes_no_flags_is_not_ready() -> None:
    """The triage page reads a patient's children and Flags with the Patient (one search,
    ``_revinclude``). A server that ignores the Flags' was "ready": the nurse saw no open
    concern and her niet-pluis raised a second one (found by review)."""
    every = [{"code": code} for code in ("read", "vread", "search-type", "create", "update")]
    children_only = ["RelatedPerson:patient"]
    patient = {"type": "Patient", "interaction": every, "searchRevInclude": children_only}
    resources = [
        {"type": kind, "interaction": every}
        for kind in ("Encounter", "Condition", "RelatedPerson", "Observation", "ServiceRequest",
                     "Organization", "Flag", "Provenance", "AuditEvent")
    ] + [patient]  # fmt: skip
    report = _checked_ehr(resources)
    assert _why_not_ready(report) == {
        "chart_revinclude": "The server does not declare including these in a patient's "
        "search (searchRevInclude): Flag:patient. The triage page then misses what they "
        "name: a child not shown, typed again, is twice on the record; an open concern not "
        "shown gets a second one."
    }


def test_a_registration_stored_with_scopes_that_cannot_write_is_not_ready(
    sandbox: Sandbox,
) -> None:
    """Scopes narrowed to the EHR's reading policy: the nurse launched, and each save waited
    in the outbox for a sign-in that never brought the right, while the test said "ready"
    (review). Saving such scopes is refused now; one stored before is found here."""
    stored = registration(sandbox.fhir_base_url).model_copy(
        update={"scopes": "launch openid fhirUser patient/*.rs"}
    )

    report = check_connection(stored, "en", timeout_seconds=5)

    assert _why_not_ready(report) == {
        "registration_scopes": "The registration does not ask for patient/*.c "
        "patient/RelatedPerson.u patient/ServiceRequest.u patient/Flag.u user/Organization.c: "
        "the app launches, and no save reaches the patient's record."
    }


def _why_not_ready(report: ConnectionReport) -> dict[str, str]:
    """The needed checks that failed, by id, with their messages; the report not ready."""
    assert not report.ready
    return {c.id: c.message for c in report.checks if c.needed and not c.ok}


def _checked_ehr(
    resources: list[dict[str, Any]], *, conditional: bool = True, transaction: bool = True
) -> ConnectionReport:
    """The test connection's report on an EHR that launches apps as Kindreflex needs and
    declares ``resources`` (each created conditionally and updated on its version, unless
    the resource says otherwise or ``conditional`` is False; a Patient's search including
    the chart's children and Flags, unless it says otherwise)."""
    chart = {"searchRevInclude": list(CHART_REVINCLUDES)}
    declared = [
        {
            "conditionalCreate": conditional,
            "versioning": "versioned-update",
            **(chart if resource["type"] == "Patient" else {}),
            **resource,
        }
        for resource in resources
    ]
    answer = {
        "authorization_endpoint": "https://ehr.example/authorize",
        "capabilities": [
            "launch-ehr",
            "launch-standalone",
            "context-ehr-encounter",
            "sso-openid-connect",
        ],
        "grant_types_supported": ["authorization_code"],
        "authorization_response_iss_parameter_supported": True,
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "interaction": [{"code": "transaction"}] if transaction else [],
                "resource": declared,
            }
        ],
    }
    with ServedJson(json.dumps(answer).encode(), path="/fhir") as served:
        return check_connection(registration(served.url), "en", timeout_seconds=5)


def test_a_long_list_of_members_of_the_wrong_kind_names_the_first_five() -> None:
    answer = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [1] * 40}
    with ServedJson(json.dumps(answer).encode(), path="/fhir") as served:
        report = check_connection(registration(served.url), "nl", timeout_seconds=5)
    messages = {check.id: check.message for check in report.checks}
    assert messages["capability_statement_members"] == (
        "Het CapabilityStatement heeft onderdelen van de verkeerde soort, genegeerd: "
        "rest[0], rest[1], rest[2], rest[3], rest[4] (+35)."
    )
