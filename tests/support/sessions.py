"""Signed-in users for tests: an app session made directly in the session store.

The SMART launch that normally creates it is tested end to end in
``tests/integration/test_smart_launch.py``; tests of what a role may do start here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from fastapi import FastAPI

from service.app import create_app
from service.db.base import Database, utcnow
from service.i18n import Language
from service.settings import Settings
from service.tenancy import TenantContext
from smart_app.session import (
    CSRF_HEADER,
    SESSION_COOKIE,
    AppUser,
    NewSession,
    Role,
    registration_fingerprint,
)

#: Never called: these sessions only reach our own index-backed endpoints.
UNUSED_FHIR = "http://127.0.0.1:9/fhir"


@dataclass(frozen=True)
class User:
    """A signed-in user: the request headers (session cookie, CSRF token) and the session."""

    headers: dict[str, str]
    session_id: str


def make_app(database_url: str, database: Database) -> FastAPI:
    """The real app on a test database (settings for tests: unsafe switches allowed)."""
    return create_app(Settings(environment="test", database_url=database_url), database)


def launched_under(tenant: TenantContext, registration_id: str) -> str:
    """The fingerprint a launch through the hospital's registration gives its session: the
    app ends a session whose registration changed its client or role mapping since."""
    registration = tenant.config.registration_by_id(registration_id)
    assert registration is not None, f"{tenant.slug} has no EHR registration {registration_id}"
    return registration_fingerprint(registration)


def signed_in(
    app: FastAPI,
    tenant: TenantContext,
    fhir_user: str,
    *roles: Role,
    fhir_base_url: str | None = None,
    patient_id: str | None = None,
    encounter_id: str | None = None,
    name: str | None = None,
    language: Language = "nl",
) -> User:
    """A session launched through the hospital's EHR registration at ``fhir_base_url``
    (default: its first registration): the app ends a session whose EHR is no longer
    registered there."""
    registration = next(
        (r for r in tenant.config.registrations if fhir_base_url in (None, r.fhir_base_url)),
        None,
    )
    assert registration is not None, f"{tenant.slug} registers no EHR at {fhir_base_url}"
    sessions = app.state.sessions
    session_id, secret = sessions.create(
        NewSession(
            tenant_id=tenant.id,
            registration_id=registration.id,
            registration_fingerprint=registration_fingerprint(registration),
            path_prefix="" if tenant.slug == "default" else f"/t/{tenant.slug}",
            fhir_base_url=registration.fhir_base_url,
            token_endpoint="http://127.0.0.1:9/token",
            # a launch without a name from the identity provider is named by its fhirUser
            user=AppUser(fhir_user=fhir_user, name=name or fhir_user, roles=frozenset(roles)),
            language=language,
            patient_id=patient_id,
            encounter_id=encounter_id,
            app_context=None,
            launch_details={},
            scope="openid fhirUser",
            access_token="unused",
            refresh_token=None,
            access_expires_at=utcnow() + timedelta(hours=1),
        )
    )
    csrf = sessions.of_browser(secret, None).csrf_token
    return User({"Cookie": f"{SESSION_COOKIE}={secret}", CSRF_HEADER: csrf}, session_id)
