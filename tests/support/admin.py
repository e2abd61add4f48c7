"""Hospitals and admins for the admin API's and screen's tests: the app with its deployment
key, a hospital configured in it, an admin signed in (API or screen), and how the screen
ties a refusal to its field."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from service.admin import access
from service.app import create_app
from service.db.base import Database, utcnow
from service.db.models import Concern
from service.outbox import DeliveryState, NewEntry, enqueue
from service.settings import load_settings
from service.tenancy import SecretBox, TenantContext, TenantDirectory
from service.tenant_config import EhrRegistration, TenantConfiguration

#: The app's ``secret_key`` in the admin tests: what stored client secrets are sealed with.
DEPLOYMENT_KEY = "admin-test-deployment-key"


@dataclass
class Hospital:
    """A configured hospital: its slug, its tenant id and the prefix of its paths."""

    slug: str
    id: int
    prefix: str


def admin_app(database: Database, database_url: str, **settings: Any) -> FastAPI:
    """The real app with DEPLOYMENT_KEY, AZ Gent its default hospital (``settings``: more)."""
    return create_app(
        load_settings(
            database_url=database_url,
            environment="test",
            secret_key=DEPLOYMENT_KEY,
            default_tenant="az-gent",
            **settings,
        ),
        database,
    )


@pytest.fixture
def client(database: Database, database_url: str) -> Iterator[TestClient]:
    """A browser on :func:`admin_app`."""
    with TestClient(admin_app(database, database_url)) as test_client:
        yield test_client


def hospital(database: Database, slug: str, prefix: str) -> Hospital:
    """A hospital with one EHR registration using a client secret, saved as version 1."""
    tenants = TenantDirectory(database, SecretBox(SecretStr(DEPLOYMENT_KEY)))
    registration = EhrRegistration(
        id="ehr",
        name="EPD",
        fhir_base_url=f"https://{slug}.example/fhir",
        client_id="kindreflex",
        client_auth="client_secret_basic",
        client_secret=SecretStr(f"secret-of-{slug}"),
    )
    config = TenantConfiguration(name=slug.upper(), registrations=[registration])
    context = tenants.save(slug, config, actor="test set-up")
    return Hospital(slug, context.id, prefix)


@pytest.fixture
def gent(database: Database) -> Hospital:
    """The default tenant: un-prefixed paths."""
    return hospital(database, "az-gent", "")


def stored_gent(database: Database) -> TenantContext:
    """AZ Gent's configuration as stored, its secrets opened with DEPLOYMENT_KEY."""
    return TenantDirectory(database, SecretBox(SecretStr(DEPLOYMENT_KEY))).get("az-gent")


def bearer(database: Database, tenant_id: int, name: str = "Els") -> dict[str, str]:
    """The API header of an admin of the tenant, signed in with a real bootstrap token."""
    token, _ = access.issue_bootstrap_token(database, tenant_id)
    issued = access.redeem_bootstrap_token(database, tenant_id, token, name)
    return {"Authorization": f"Bearer {issued.token}"}


def login_csrf(client: TestClient, prefix: str = "") -> str:
    """Open the sign-in page as a browser does: its CSRF cookie into the client's jar, and
    the hidden field that goes with it."""
    page = client.get(f"{prefix}/admin/login")
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found is not None, "no CSRF field on the sign-in page"
    return found.group(1)


def post_sign_in(
    client: TestClient, data: dict[str, str], prefix: str = "", **sent: Any
) -> httpx.Response:
    """Send the sign-in form as a browser does: from the sign-in page, with its CSRF field."""
    form = data | {"csrf_token": login_csrf(client, prefix)}
    response: httpx.Response = client.post(f"{prefix}/admin/login", data=form, **sent)
    return response


def screen_sign_in(client: TestClient, database: Database, hospital: Hospital) -> dict[str, str]:
    """Sign in on the screen; the hidden fields every form sends (CSRF token, version)."""
    token, _ = access.issue_bootstrap_token(database, hospital.id)
    post_sign_in(client, {"token": token, "name": "Els"}, follow_redirects=False)
    page = client.get("/admin").text
    csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page)
    version = re.search(r'name="version" value="(\d+)"', page)
    assert csrf is not None
    assert version is not None
    return {"csrf_token": csrf.group(1), "version": version.group(1)}


def field_tag(page: str, tag: str, field_id: str) -> str:
    """The opening tag of the field ``field_id``."""
    found = re.search(rf'<{tag} [^>]*id="{re.escape(field_id)}"[^>]*>', page)
    assert found is not None, f"no <{tag} id={field_id}>"
    return found.group(0)


def message_of(page: str, field_id: str) -> str:
    """The text of the field's message (its id ``<field>-error``), tags removed."""
    found = re.search(rf'<p class="field-error" id="{re.escape(field_id)}-error">(.*?)</p>', page)
    assert found is not None, f"no message for {field_id}"
    return re.sub(r"<[^>]+>", "", found.group(1))


def assert_tied(page: str, tag: str, field_id: str) -> str:
    """The field is marked invalid, described by its message, and the summary links to it."""
    field = field_tag(page, tag, field_id)
    assert 'aria-invalid="true"' in field
    assert f'aria-describedby="{field_id}-error"' in field
    summary = page[page.index('id="problems"') :]
    summary = summary[: summary.index("</div>")]
    assert "data-error-summary" in page[page.index('<div class="error-summary"') :][:200]
    assert f'<a href="#{field_id}">' in summary
    return message_of(page, field_id)


def undelivered_save(
    database: Database, tenant_id: int, server: str, state: DeliveryState, registration: str
) -> int:
    """A nurse's triage save on ``server`` through ``registration``, undelivered in ``state``."""
    entry = NewEntry(
        "triage", registration, server, "ended", "Practitioner/nurse-1", "Patient/1", {}
    )
    with database.session() as session:
        row = enqueue(session, tenant_id, entry)
        row.state = state
        # not due: the worker leaves it as it is while the test reads the count
        row.next_attempt_at = utcnow() + timedelta(days=1)
        session.flush()
        return row.id


def case_on(database: Database, tenant_id: int, server: str, status: str = "open") -> None:
    """A case on the worklist for a patient of ``server``."""
    with database.session() as session:
        session.add(
            Concern(
                tenant_id=tenant_id, fhir_base_url=server, patient_ref="Patient/7",
                flag_identifier=f"flag-{server}-{status}", flagged_at=utcnow(),
                flagged_by="Practitioner/nurse-1", triggers=[], children_birth_dates=[],
                last_step="step-2", status=status,
            )
        )  # fmt: skip


@dataclass
class WithACase:
    """The app on a hospital with one case on its worklist, and a browser on the app."""

    app: FastAPI
    client: TestClient
    tenant: TenantContext  # the hospital's configuration as the app holds it
    case_id: int


@contextmanager
def with_a_case(database: Database, database_url: str, hospital: Hospital) -> Iterator[WithACase]:
    """:func:`admin_app` running, with an open case on a patient of ``hospital``'s EHR (its
    FHIR server is not run). ``hospital``: the app's default, AZ Gent (:func:`gent`)."""
    case_on(database, hospital.id, f"https://{hospital.slug}.example/fhir")
    with database.session() as session:
        case_id = session.scalars(select(Concern.id)).one()
    app = admin_app(database, database_url)
    with TestClient(app) as client:
        yield WithACase(app, client, app.state.tenants.get(hospital.slug), case_id)
