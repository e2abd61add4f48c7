"""The headers every answer of the service carries, whatever its kind: the JSON and YAML
APIs, the operations endpoints and the CDS hooks as well as the pages."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi.testclient import TestClient

from service.db.base import Database
from tests.support.admin import Hospital, admin_app, bearer, gent, with_a_case
from tests.support.cds import ENCOUNTER_START
from tests.support.sessions import signed_in

__all__ = ["gent"]  # the fixture of the hospital

EHR_ORIGIN = "https://epd.az-gent.example"


def test_no_answer_is_read_by_the_browser_as_another_type_than_it_says(
    database: Database, database_url: str, gent: Hospital
) -> None:
    """The APIs answered ``Cache-Control: no-store`` but no ``X-Content-Type-Options:
    nosniff``, which only the pages had: a browser could read a case's JSON or the admin's
    configuration YAML, text users typed, as something else (found by a route sweep). Now
    every answer says it once; the pages, which set it themselves, not twice."""
    with with_a_case(database, database_url, gent) as running:
        client, case_id = running.client, running.case_id
        social = signed_in(running.app, running.tenant, "Practitioner/sw", "social-worker").headers
        admin = bearer(database, gent.id)
        calls: list[tuple[str, dict[str, str]]] = [
            ("/api/cases", social),
            (f"/api/cases/{case_id}", social),
            ("/t/az-gent/api/cases", social),
            ("/api/cases/999999", social),  # not found
            ("/api/cases", {}),  # not signed in
            ("/admin/api/config", admin),
            ("/admin/api/config.yaml", admin),
            ("/admin/api/config", {}),  # not signed in
            ("/metrics", {}),
            ("/healthz", {}),
            ("/readyz", {}),
            ("/openapi.json", {}),
            ("/.well-known/jwks.json", {}),
            ("/cds-services", {}),  # the CDS fast path: no EHR's JWT
            ("/admin/login", {"Accept": "text/html"}),  # a page
        ]
        answers = [(path, client.get(path, headers=headers)) for path, headers in calls]
    assert [(path, answer.status_code) for path, answer in answers] == [
        ("/api/cases", 200),
        (f"/api/cases/{case_id}", 503),  # the EHR's FHIR server is not run here
        ("/t/az-gent/api/cases", 200),
        ("/api/cases/999999", 404),
        ("/api/cases", 401),
        ("/admin/api/config", 200),
        ("/admin/api/config.yaml", 200),
        ("/admin/api/config", 401),
        ("/metrics", 200),
        ("/healthz", 200),
        ("/readyz", 200),
        ("/openapi.json", 200),
        ("/.well-known/jwks.json", 200),
        ("/cds-services", 401),
        ("/admin/login", 200),
    ]
    assert answers[6][1].headers["content-type"].startswith("application/yaml")
    # once: a second one (the pages set their own) would read "nosniff, nosniff"
    sniffable = [
        (path, answer.headers.get("x-content-type-options"))
        for path, answer in answers
        if answer.headers.get("x-content-type-options") != "nosniff"
    ]
    assert sniffable == []


#: The headers every answer carries (``service.app.DefaultHeaders``), the outermost
#: answers included.
DEFAULTS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}


def defaults_of(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: headers.get(name, "missing") for name in DEFAULTS}


def test_a_cors_preflight_says_it_too(
    database: Database, database_url: str, gent: Hospital
) -> None:
    """A browser-based CDS client's preflight (``service.cds.fastpath``, answered before the
    app's middleware) had neither header, which its refusal, a JSON answer, has."""
    app = admin_app(database, database_url)
    with TestClient(app) as client:
        tenants = app.state.tenants
        config = tenants.get(gent.slug).config
        registration = config.registrations[0].model_copy(update={"frame_origins": [EHR_ORIGIN]})
        tenants.save(gent.slug, config.model_copy(update={"registrations": [registration]}), "test")
        preflight = client.options(
            f"/cds-services/{ENCOUNTER_START}",
            headers={"Origin": EHR_ORIGIN, "Access-Control-Request-Method": "POST"},
        )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == EHR_ORIGIN
    assert defaults_of(preflight.headers) == DEFAULTS


def test_an_unexpected_error_says_it_too(database: Database, database_url: str) -> None:
    """An exception no handler takes is answered by Starlette's outermost layer
    (``ServerErrorMiddleware``: "Internal Server Error" in plain text), which is outside
    the app's middleware: it had neither header. No route of the service is known to fail
    so (each found was a bug, fixed), so this app, and only it, is given one that does."""
    app = admin_app(database, database_url)

    @app.get("/fails")
    def fails() -> None:
        raise RuntimeError("an error no handler takes")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/fails")
    assert (answer.status_code, answer.text) == (500, "Internal Server Error")
    assert defaults_of(answer.headers) == DEFAULTS
