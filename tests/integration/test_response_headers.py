"""The headers every answer of the service carries, whatever its kind: the JSON and YAML
APIs, the operations endpoints and the CDS hooks as well as the pages."""

from __future__ import annotations

from service.db.base import Database
from tests.support.admin import Hospital, bearer, gent, with_a_case
from tests.support.sessions import signed_in

__all__ = ["gent"]  # the fixture of the hospital


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
