"""A security sweep over every route the app serves, found by enumerating the app itself.

A route added later is swept without anyone listing it here: it is public only if the
allow-list below names it (with the reason), and otherwise it must belong to one of the
guarded families (``GUARDS``), or the sweep fails and asks for it to be classified.

For each guarded route and method, on the real app and database (SQLite and PostgreSQL):

* without credentials: 401 or 403 (or the admin screen's redirect to its own sign-in
  page), never 2xx, never a 500, never a redirect off the site; a method the address
  does not serve likewise (a form's address opened as a page goes to its page, refused);
* a CDS hook call (discovery included) without the EHR's signed JWT: 401, whatever
  browser session comes with it;
* with a session whose user lacks the route's role (a nurse on the social service's and
  the admin's routes, a social worker on the admin's, …): 403, the CSRF token sent;
* a state-changing method (POST, PUT, PATCH, DELETE) of a cookie-authenticated route
  without the CSRF token, by a user who has the role: 403, and nothing written but the
  audit trail's record of the refusal;
* a session of another hospital, on this hospital's ``/t/{tenant}`` routes: refused as
  no session is, nothing written;
* every HTML page answered along the way (refusals, sign-in page, the pages themselves)
  carries the security headers: a CSP with ``frame-ancestors``, ``nosniff``, a
  Referrer-Policy and ``Cache-Control: no-store`` (pages show patients' data).

The CDS hooks are answered before the router (``service.cds.fastpath``): requests, not
the route table, are swept, so they go through the fast path as an EHR's calls do.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.cds.router import SERVICES
from service.db.base import Base, Database
from smart_app.errors import JSON_API
from smart_app.session import CSRF_HEADER, ROLES, Role
from tests.support.admin import Hospital, gent, hospital, screen_sign_in, with_a_case
from tests.support.sessions import signed_in

__all__ = ["gent"]  # the fixture of the hospital

TENANT_PREFIX = "/t/{tenant}"
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

#: The routes anyone may call, (method, path without the hospital prefix) → why.
PUBLIC: dict[tuple[str, str], str] = {
    # the API description an integrator generates a client from (every environment)
    ("GET", "/openapi.json"): "API description, no data",
    ("HEAD", "/openapi.json"): "API description, no data",
    # the API's pages for people: demo and test only, never in production (service.app)
    ("GET", "/docs"): "Swagger UI, not served in production",
    ("HEAD", "/docs"): "Swagger UI, not served in production",
    ("GET", "/docs/oauth2-redirect"): "Swagger UI, not served in production",
    ("HEAD", "/docs/oauth2-redirect"): "Swagger UI, not served in production",
    ("GET", "/redoc"): "ReDoc, not served in production",
    ("HEAD", "/redoc"): "ReDoc, not served in production",
    # operations: probes and Prometheus; the ingress keeps /metrics and /readyz from the
    # outside (deploy/kubernetes/ingress.yaml, README "Operations")
    ("GET", "/healthz"): "liveness probe",
    ("GET", "/readyz"): "readiness probe (ingress: internal only)",
    ("GET", "/metrics"): "Prometheus scrape (ingress: internal only)",
    # our public keys, which EHRs verify our client assertions with
    ("GET", "/.well-known/jwks.json"): "JWKS",
    # the SMART launch and the authorization server's redirect: they start a session,
    # their query strings are the credentials (launch token, code and state)
    ("GET", "/launch"): "SMART EHR launch",
    ("GET", "/callback"): "SMART redirect URI",
    ("GET", "/callback/{hospital}/{registration_id}"): "a registration's own redirect URI",
    # the screens' stylesheets, scripts and icon
    ("GET", "/app/static/{name}"): "static asset",
    ("GET", "/social/static/{name}"): "static asset",
    ("GET", "/favicon.ico"): "icon",
    # the admin's sign-in: the bootstrap token or admin token is what it checks. Its form
    # (POST /admin/login) is no exception: swept as the admin's other forms, it needs the
    # CSRF token of the sign-in page (login CSRF), and no session refuses it less.
    ("GET", "/admin/login"): "admin sign-in page",
    ("POST", "/admin/api/session"): "admin API sign-in (the bootstrap token is the credential)",
}

#: The HTML pages exempt from the page headers: FastAPI's API pages load their script from
#: a CDN and run inline script, which our CSP forbids; they are not served in production.
FOREIGN_PAGES = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})


@dataclass(frozen=True)
class Guard:
    """Who may call a family of routes: the roles of a launched user (the admin's routes
    also take an admin's own sign-in, cookie or Bearer), or the EHR (a signed JWT)."""

    roles: frozenset[Role] = frozenset()
    ehr: bool = False


#: The guarded families, by the start of their path (without the hospital prefix).
GUARDS: tuple[tuple[re.Pattern[str], Guard], ...] = (
    (re.compile(r"/app/"), Guard(frozenset({"nurse"}))),
    (re.compile(r"/social(/|$)|/api/cases(/|$)"), Guard(frozenset({"social-worker"}))),
    (re.compile(r"/monitoring"), Guard(frozenset({"social-worker", "admin"}))),
    (re.compile(r"/admin(/|$)"), Guard(frozenset({"admin"}))),
    # discovery too: the specification lets it be open, this service asks the EHR's JWT
    (re.compile(r"/cds-services(/|$)"), Guard(ehr=True)),
)


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str  # as the app routes it, with the hospital prefix if any

    @property
    def unprefixed(self) -> str:
        return self.template.removeprefix(TENANT_PREFIX)

    @property
    def public(self) -> bool:
        return (self.method, self.unprefixed) in PUBLIC

    @property
    def guard(self) -> Guard:
        found = [guard for pattern, guard in GUARDS if pattern.match(self.unprefixed)]
        assert found, (
            f"{self.method} {self.template} is neither public (PUBLIC) nor in a guarded "
            "family (GUARDS): classify it"
        )
        return found[0]


def endpoints(app: FastAPI) -> list[Endpoint]:
    """Every (method, path) the app routes, OpenAPI or not, at the root and per hospital."""
    found = {
        Endpoint(method, route.path)
        for route in iter_route_contexts(app.routes)
        if route.path is not None
        for method in route.methods or ()
    }
    return sorted(found, key=lambda e: (e.template, e.method))


@dataclass
class World:
    """The app, a hospital with a case, and the users the sweep calls as."""

    client: TestClient
    database: Database
    case_id: int
    tenant_id: int
    sessions: dict[Role, dict[str, str]]  # role → the headers of a launched user
    seen: list[tuple[str, str, httpx.Response]] = field(default_factory=list)

    def concrete(self, template: str) -> str:
        values = {
            "tenant": "az-gent",
            "hospital": "az-gent",
            "registration_id": "ehr",
            "case_id": str(self.case_id),
            "step": "step-4",
            "service_id": next(iter(SERVICES)),
            "name": "nurse.css" if "/app/" in template else "casefile.css",
        }
        return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], template)

    def call(self, endpoint: Endpoint, headers: dict[str, str] | None = None) -> httpx.Response:
        """The request as its caller sends it: a browser asks pages for HTML; a body of
        the kind the route takes (JSON for the APIs and hooks, else a form)."""
        path = self.concrete(endpoint.template)
        api = JSON_API.fullmatch(path) or "/cds-services" in path
        sent = {"Accept": "application/json" if api else "text/html"} | (headers or {})
        body: dict[str, Any] = {}
        if endpoint.method in STATE_CHANGING:
            body = {"json": {}} if api else {"data": {"note": "sweep"}}
        response: httpx.Response = self.client.request(
            endpoint.method, path, headers=sent, follow_redirects=False, **body
        )
        self.seen.append((endpoint.method, endpoint.template, response))
        # a 502/503 says the EHR's FHIR server (not run here) does not answer: never a 500
        assert response.status_code != 500, (endpoint, response.text[:300])
        return response


@pytest.fixture
def world(database: Database, database_url: str, gent: Hospital) -> Iterator[World]:
    with with_a_case(database, database_url, gent) as running:
        app, tenant = running.app, running.tenant
        sessions = {
            role: signed_in(app, tenant, f"Practitioner/{role}", role, patient_id="7").headers
            for role in ROLES
        }
        yield World(running.client, database, running.case_id, gent.id, sessions)


def without_csrf(headers: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != CSRF_HEADER}


def guarded(app: FastAPI) -> list[Endpoint]:
    return [e for e in endpoints(app) if not e.public]


def assert_refused_anonymous(endpoint: Endpoint, response: httpx.Response) -> None:
    if response.status_code in (401, 403):
        return
    # the admin screen sends a browser to its sign-in page, on this site
    assert response.status_code in (302, 303, 307), (endpoint, response.status_code)
    location = response.headers["location"]
    assert_on_site(location)
    assert urlsplit(location).path.endswith("/admin/login"), (endpoint, location)


def assert_on_site(location: str) -> None:
    """A redirect's target is a path of this site (not ``//host``, not an absolute URL)."""
    target = urlsplit(location)
    assert not target.scheme, location
    assert not target.netloc, location
    assert location.startswith("/"), location
    assert not location.startswith("//"), location


def test_the_sweep_sees_every_family_of_routes(world: World) -> None:
    """The enumeration finds the routes outside OpenAPI too, at the root and per hospital."""
    app = world.client.app
    assert isinstance(app, FastAPI)
    templates = {e.template for e in endpoints(app)}
    for expected in (
        "/app/triage",
        "/t/{tenant}/app/triage",
        "/social/cases/{case_id}",
        "/social/static/{name}",
        "/favicon.ico",
        "/cds-services/{service_id}",
        "/t/{tenant}/cds-services/{service_id}/feedback",
        "/admin/api/config",
        "/monitoring.csv",
        "/launch",
    ):
        assert expected in templates
    for endpoint in endpoints(app):  # each is public or classified
        assert endpoint.public or endpoint.guard is not None
    assert len(guarded(app)) >= 90


def test_public_routes_answer_without_credentials(world: World) -> None:
    app = world.client.app
    assert isinstance(app, FastAPI)
    for endpoint in endpoints(app):
        if endpoint.public:
            world.call(endpoint)  # never a 500
    # the static routes serve their own files, nothing else of the package
    for path in ("/app/static/session.py", "/app/static/casefile.js", "/social/static/nurse.js"):
        assert world.client.get(path).status_code == 404, path
    assert world.client.get("/app/static/..%2Fsession.py").status_code == 404
    assert_page_headers(world)


def test_every_guarded_route_refuses_a_caller_without_credentials(world: World) -> None:
    app = world.client.app
    assert isinstance(app, FastAPI)
    for endpoint in guarded(app):
        assert_refused_anonymous(endpoint, world.call(endpoint))
    assert_page_headers(world)


def test_a_session_of_the_wrong_role_is_refused(world: World) -> None:
    """With the session's CSRF token, so that the role is what refuses."""
    app = world.client.app
    assert isinstance(app, FastAPI)
    tried = 0
    for endpoint in guarded(app):
        guard = endpoint.guard
        for role, headers in world.sessions.items():
            if guard.ehr:  # a browser session is no EHR's signed call
                response = world.call(endpoint, headers)
                assert response.status_code == 401, (endpoint, role, response.status_code)
            elif role not in guard.roles:
                response = world.call(endpoint, headers)
                assert response.status_code == 403, (endpoint, role, response.status_code)
                tried += 1
    assert tried >= 100
    assert_page_headers(world)


def test_a_change_without_the_csrf_token_is_refused_and_writes_nothing(world: World) -> None:
    """By a user who has the route's role: a launched user, and for the admin's routes an
    admin signed in on the screen (the admin cookie) too."""
    app = world.client.app
    assert isinstance(app, FastAPI)
    tried = 0
    for endpoint in guarded(app):
        guard = endpoint.guard
        if endpoint.method not in STATE_CHANGING or guard.ehr:
            continue
        role = sorted(guard.roles)[0]
        other = next(r for r in world.sessions if r != role)
        headers = without_csrf(world.sessions[role])
        # no token, and the token of another session of the browser's (another user's)
        for sent in (headers, headers | {CSRF_HEADER: world.sessions[other][CSRF_HEADER]}):
            before = snapshot(world.database)
            response = world.call(endpoint, sent)
            assert response.status_code == 403, (endpoint, response.status_code, response.text)
            assert snapshot(world.database) == before, endpoint
            tried += 1
    assert tried >= 60
    # an admin signed in on the screen: the admin cookie, no launch
    with TestClient(app) as browser:
        screen_sign_in(browser, world.database, Hospital("az-gent", world.tenant_id, ""))
        admin = World(browser, world.database, world.case_id, world.tenant_id, {})
        for endpoint in guarded(app):
            if endpoint.method in STATE_CHANGING and endpoint.unprefixed.startswith("/admin"):
                before = snapshot(world.database)
                response = admin.call(endpoint)
                assert response.status_code == 403, (endpoint, response.status_code)
                assert snapshot(world.database) == before, endpoint
        world.seen += admin.seen
    assert_page_headers(world)


def test_every_page_a_user_of_the_right_role_opens_carries_the_headers(world: World) -> None:
    app = world.client.app
    assert isinstance(app, FastAPI)
    for endpoint in guarded(app):
        guard = endpoint.guard
        if endpoint.method == "GET" and not guard.ehr:
            world.call(endpoint, world.sessions[sorted(guard.roles)[0]])
    assert any(r.status_code == 200 for _, _, r in world.seen)
    assert_page_headers(world)


ROUTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
BROWSER = {"Accept": "text/html"}


def test_a_method_a_guarded_address_does_not_serve_leads_nowhere_else(world: World) -> None:
    """A browser opening a form's address (a page only posts to it) is sent to the page
    the form belongs to (``service.app._page_of_form``): on this site, and refused there
    in turn; any other method not routed is refused, never answered or a 500."""
    app = world.client.app
    assert isinstance(app, FastAPI)
    routed: dict[str, set[str]] = {}
    for endpoint in endpoints(app):
        routed.setdefault(endpoint.template, set()).add(endpoint.method)
    for template, methods in routed.items():
        if all(Endpoint(m, template).public for m in methods):
            continue
        for method in ROUTED_METHODS:
            if method in methods:
                continue
            endpoint = Endpoint(method, template)
            response = world.call(endpoint)
            assert not 200 <= response.status_code < 300, (endpoint, response.status_code)
            if response.is_redirect:
                location = response.headers["location"]
                assert_on_site(location)
                there = world.client.get(location, headers=BROWSER, follow_redirects=False)
                assert_refused_anonymous(Endpoint("GET", location), there)
    assert_page_headers(world)


def test_a_session_of_another_hospital_is_no_credential(world: World, database: Database) -> None:
    """Every role of AZ Brugge, on AZ Gent's routes at their hospital prefix: refused."""
    hospital(database, "az-brugge", "/t/az-brugge")
    app = world.client.app
    assert isinstance(app, FastAPI)
    tenant = app.state.tenants.get("az-brugge")
    for role in ROLES:
        headers = signed_in(app, tenant, f"Practitioner/b-{role}", role).headers
        for endpoint in guarded(app):
            if endpoint.template.startswith(TENANT_PREFIX):
                before = snapshot(world.database)
                response = world.call(endpoint, headers)
                assert_refused_anonymous(endpoint, response)  # as if it had none
                assert snapshot(world.database) == before, endpoint
    assert_page_headers(world)


#: What a refused request may write: the audit trail's record of the refusal.
AUDIT_TABLES = frozenset({"audit_records"})


def snapshot(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table but the audit trail's."""
    with database.session() as session:
        return {
            table.name: sorted(map(tuple, session.execute(select(table)).all()), key=repr)
            for table in Base.metadata.sorted_tables
            if table.name not in AUDIT_TABLES
        }


def assert_page_headers(world: World) -> None:
    """Every HTML answer of the sweep so far carries the pages' security headers."""
    pages = 0
    for method, template, response in world.seen:
        if "text/html" not in response.headers.get("content-type", ""):
            continue
        if template.removeprefix(TENANT_PREFIX) in FOREIGN_PAGES:
            continue
        pages += 1
        where = (method, template, response.status_code)
        csp = response.headers.get("content-security-policy", "")
        assert re.search(r"(^|;)\s*frame-ancestors [^;]+", csp), (where, csp)
        assert response.headers.get("x-content-type-options") == "nosniff", where
        assert response.headers.get("referrer-policy"), where
        assert "no-store" in response.headers.get("cache-control", ""), where
    assert pages > 0
