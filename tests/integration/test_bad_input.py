"""A sweep of bad input over every route that takes a body, a query or a path value.

The routes are read from the app itself (``app.routes``; the bodies' fields from
``app.openapi()``), so that a route added later is swept too: one that takes input and is
not listed in :data:`ROUTES` fails :func:`test_every_route_that_takes_input_is_swept`
until it is. Each route is called by a user it admits (a nurse's or a social worker's
session with its CSRF token, an admin's bearer token or screen sign-in, an EHR's signed
CDS Hooks JWT) with: a body that is malformed or cut short, an array, a string or null
where an object is expected, a known field of the wrong type, an unknown code, a string
of 100 000 characters, bytes that are no UTF-8, a body over the app's limit, a required
field missing, and a path value that names nothing (an unknown id, text where a number
is, a number past the database's integers, an unknown hospital).

Each must be refused: never a 5xx, no traceback, a 4xx with an error a client can read
(``{"detail": …}`` or an OperationOutcome from the JSON APIs and the CDS hooks; a page,
in Dutch by default, from the screens) and nothing written to the database but the
audit trail's record of the refusal (every table's rows compared before and after).

The real app on SQLite and PostgreSQL, real sessions, bootstrap tokens and ES384 JWTs.
No FHIR server: a refused request never reaches one (``UNUSED_FHIR``).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select, text

from sandbox.keys import SigningKey
from service.admin import access
from service.app import create_app
from service.cds.router import MAX_BODY_BYTES
from service.db.base import Base, Database, utcnow
from service.settings import Settings
from service.tenancy import SecretBox, TenantDirectory
from service.tenant_config import CdsIssuer, EhrRegistration, TenantConfiguration
from tests.support.admin import login_csrf, post_sign_in
from tests.support.casework import SOCIAL_WORKER, STEP_4_FORM, STEP_6_FORM, index_case
from tests.support.cds import ENCOUNTER_START, PUBLIC_URL, Ehr, hook_body
from tests.support.sessions import UNUSED_FHIR, signed_in

KEY = "bad-input-deployment-key"
EHR_KEY = SigningKey.generate("ehr-key-1", "ES384")
EHR = Ehr(EHR_KEY, "https://ehr.example/jwks", "https://ehr.example/cds")
NURSE = "Practitioner/nurse-1"
LONG = "x" * 100_000
NOT_UTF_8 = b"\xff\xfe\xc3"
UNKNOWN_CODE = "no-such-code"


# -- the hospital ---------------------------------------------------------------------------


@dataclass
class World:
    """The app for one hospital with one open case, and a caller of each kind."""

    app: FastAPI
    database: Database
    anyone: TestClient
    admin_screen: TestClient
    case_id: int
    headers: dict[str, dict[str, str]]  # by who: the request headers of that caller
    admin_form: dict[str, dict[str, list[str]]]  # the admin screen's forms by action
    bootstrap_token: str
    login_csrf: str  # the sign-in page's CSRF field, its cookie in ``anyone``'s jar

    def row_version(self) -> int:
        with self.database.session() as session:
            found = session.execute(
                text("SELECT row_version FROM concerns WHERE id = :id"), {"id": self.case_id}
            ).scalar_one()
            return int(found)


class _Forms(HTMLParser):
    """The forms of a page: each one's action and the fields a submit sends."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: dict[str, dict[str, list[str]]] = {}
        self._action: str | None = None
        self._textarea: str | None = None
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._action = urllib.parse.urlsplit(a.get("action", "")).path
            self.forms.setdefault(self._action, {})
        if self._action is None or not a.get("name"):
            return
        fields = self.forms[self._action]
        kind = a.get("type", "text")
        if tag == "input" and kind not in ("submit", "button", "file"):
            if kind in ("checkbox", "radio") and "checked" not in a:
                return
            fields.setdefault(a["name"], []).append(a.get("value", "on"))
        elif tag == "textarea":
            self._textarea = a["name"]
            fields.setdefault(a["name"], [""])
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select and self._select not in fields:
            fields[self._select] = [a.get("value", "")]

    def handle_data(self, data: str) -> None:
        if self._action is not None and self._textarea:
            self.forms[self._action][self._textarea][0] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._action = None
        if tag == "textarea":
            self._textarea = None
        if tag == "select":
            self._select = None


def _hospital(database: Database) -> None:
    registration = EhrRegistration(
        id="ehr",
        name="EHR",
        fhir_base_url=UNUSED_FHIR,
        client_id="kindreflex",
        cds_issuers=[CdsIssuer(iss=EHR.issuer, jwks={"keys": [EHR_KEY.public_jwk()]})],
    )
    config = TenantConfiguration(name="AZ Gent", registrations=[registration])
    TenantDirectory(database, SecretBox(SecretStr(KEY))).save("default", config, actor="set-up")


@pytest.fixture
def world(database_url: str, database: Database) -> Iterator[World]:
    _hospital(database)
    settings = Settings(
        environment="test", public_url=PUBLIC_URL, database_url=database_url, secret_key=KEY
    )
    app = create_app(settings, database)
    tenant = app.state.tenants.get("default")
    case_id = index_case(database, tenant, "Patient/1", utcnow())
    nurse = signed_in(app, tenant, NURSE, "nurse", patient_id="1", encounter_id="e1")
    worker = signed_in(app, tenant, SOCIAL_WORKER, "social-worker")
    token, _ = access.issue_bootstrap_token(database, tenant.id)
    api = access.redeem_bootstrap_token(database, tenant.id, token, "Els")
    with (
        TestClient(app, base_url=PUBLIC_URL, follow_redirects=False) as anyone,
        TestClient(app, base_url=PUBLIC_URL, follow_redirects=False) as screen,
    ):
        token, _ = access.issue_bootstrap_token(database, tenant.id)
        signed = post_sign_in(screen, {"token": token, "name": "Els"})
        assert signed.status_code == 303, signed.text
        overview = screen.get("/admin")
        assert overview.status_code == 200, overview.text
        parser = _Forms()
        parser.feed(overview.text)
        csrf = parser.forms["/admin/hooks"]["csrf_token"][0]
        login_token, _ = access.issue_bootstrap_token(database, tenant.id)
        yield World(
            app=app,
            database=database,
            anyone=anyone,
            admin_screen=screen,
            case_id=case_id,
            headers={
                "anyone": {},
                "nurse": nurse.headers,
                "social-worker": worker.headers,
                "admin-api": {"Authorization": f"Bearer {api.token}"},
                "admin-screen": {"X-CSRF-Token": csrf},
                "ehr": {},  # a token per call: :func:`_cds_token`
            },
            admin_form=parser.forms,
            bootstrap_token=login_token,
            login_csrf=login_csrf(anyone),
        )


# -- what each route takes -------------------------------------------------------------------

Body = dict[str, Any] | list[Any] | str | None


@dataclass(frozen=True)
class Takes:
    """What a route reads and who may call it.

    ``body``: "json" (a JSON object), "yaml" (the configuration as YAML text), "form" (a
    page's form), "fhir" (a FHIR Bundle as JSON) or None (no body: its path and query only).
    ``base``: a body the route would take, or nearly (each probe breaks one thing in it).
    ``choices``: a form's fields that take a code; ``numbers``, ``dates``: those that take
    a number or a date; ``free_text``: those of free text.
    """

    who: str
    body: str | None = None
    base: Callable[[World], Body] = lambda world: None
    choices: tuple[str, ...] = ()
    numbers: tuple[str, ...] = ()
    dates: tuple[str, ...] = ()
    free_text: tuple[str, ...] = ()
    path: dict[str, str] = field(default_factory=dict)  # a path parameter's good value
    #: probes (by the start of their description) the route may take: a value it ignores
    accepts: tuple[str, ...] = ()


def _case(world: World) -> dict[str, str]:
    return {"case_id": str(world.case_id)}


def _version(world: World) -> int:
    return world.row_version()


def _get_json(path: str) -> Callable[[World], Body]:
    """The admin API's own answer to GET ``path``: what a PUT there takes."""

    def base(world: World) -> Body:
        answer = world.anyone.get(path, headers=world.headers["admin-api"])
        assert answer.status_code == 200, answer.text
        got: Body = answer.json()
        return got

    return base


def _admin_form(action: str) -> Callable[[World], Body]:
    def base(world: World) -> Body:
        return dict(world.admin_form[action])

    return base


def _admin_page_form(page: str, action: str) -> Callable[[World], Body]:
    def base(world: World) -> Body:
        parser = _Forms()
        parser.feed(world.admin_screen.get(page).text)
        return dict(parser.forms[action])

    return base


def _step_4(world: World) -> Body:
    return {
        "row_version": _version(world),
        "decision": "concerning-unwilling",
        "discussed_with_patient": True,
    }


def _social_form(fields: dict[str, Any]) -> Callable[[World], Body]:
    def base(world: World) -> Body:
        return {"row_version": str(_version(world)), **fields}

    return base


_TRIAGE_FORM = {
    "page_id": "0" * 32,
    "child-0-ref": "urn:uuid:7e1e0c9a-4d6e-4a4e-9a39-2f8f1d3c0b11",
    "child-0-name": "Lotte",
    "child-0-birth_date": "2019-05-01",
    "child-0-relationship": "DAU",
    "child-0-lives_with": "permanently",
    "assessment": "niet-pluis",
    "reasons": "Zegt dat de kinderen alleen thuis zijn.",
}

ROUTES: dict[tuple[str, str], Takes] = {
    # health and SMART launch: anyone, their query only
    ("GET", "/readyz"): Takes("anyone"),
    ("GET", "/launch"): Takes("anyone"),
    ("GET", "/callback"): Takes("anyone"),
    ("GET", "/callback/{hospital}/{registration_id}"): Takes(
        "anyone", path={"hospital": "default", "registration_id": "ehr"}
    ),
    # a stylesheet: its ``?v=`` only makes the address new for each release, and it is the
    # same for every hospital
    ("GET", "/app/static/{name}"): Takes(
        "anyone", path={"name": "nurse.css"}, accepts=("?v", "an unknown hospital")
    ),
    ("GET", "/social/static/{name}"): Takes(
        "anyone", path={"name": "casefile.css"}, accepts=("?v", "an unknown hospital")
    ),
    # CDS Hooks
    ("POST", "/cds-services/{service_id}"): Takes(
        "ehr", "json", lambda world: hook_body(), path={"service_id": ENCOUNTER_START}
    ),
    ("POST", "/cds-services/{service_id}/feedback"): Takes(
        "ehr",
        "json",
        lambda world: {
            "feedback": [
                {
                    "card": "2b8e5f4e-0c3b-4c55-8d0f-3f8a1c5a7d10",
                    "outcome": "accepted",
                    "outcomeTimestamp": "2026-01-01T10:00:00Z",
                    "acceptedSuggestions": [{"id": "x"}],
                }
            ]
        },
        path={"service_id": ENCOUNTER_START},
    ),
    # the nurse's screen
    ("POST", "/app/triage"): Takes(
        "nurse",
        "form",
        lambda world: dict(_TRIAGE_FORM),
        choices=(
            "assessment",
            "child-0-relationship",
            "child-0-lives_with",
            "action",
            "pregnancy_of",
            "support_actions",
        ),
        dates=("child-0-birth_date", "expected_date"),
        free_text=("reasons", "child-0-name", "who_helps", "support_note"),
    ),
    # the admin API
    ("POST", "/admin/api/session"): Takes(
        "anyone", "json", lambda world: {"token": world.bootstrap_token, "name": "Els"}
    ),
    ("DELETE", "/admin/api/session"): Takes("admin-api"),
    ("PUT", "/admin/api/config"): Takes("admin-api", "json", _get_json("/admin/api/config")),
    ("PUT", "/admin/api/config.yaml"): Takes(
        "admin-api",
        "yaml",
        lambda world: (
            world.anyone.get("/admin/api/config.yaml", headers=world.headers["admin-api"]).text
        ),
    ),
    ("PUT", "/admin/api/registrations/{registration_id}"): Takes(
        "admin-api",
        "json",
        lambda world: _get_json("/admin/api/registrations")(world)[0],  # type: ignore[index]
        path={"registration_id": "ehr"},
        # the path names the registration (a body's id is not read)
        accepts=("id",),
    ),
    ("DELETE", "/admin/api/registrations/{registration_id}"): Takes(
        "admin-api", path={"registration_id": "ehr"}
    ),
    ("POST", "/admin/api/registrations/{registration_id}/test-connection"): Takes(
        "admin-api", path={"registration_id": "no-such-ehr"}
    ),
    # a PUT replaces the settings: each left out is its default
    ("PUT", "/admin/api/hooks"): Takes(
        "admin-api", "json", _get_json("/admin/api/hooks"), accepts=("an empty object",)
    ),
    ("GET", "/admin/api/partners"): Takes("admin-api"),
    ("PUT", "/admin/api/partners"): Takes("admin-api", "fhir", _get_json("/admin/api/partners")),
    # the plan's default wording; its revision is the service's to raise (a sent one ignored)
    ("PUT", "/admin/api/plan"): Takes(
        "admin-api", "json", _get_json("/admin/api/plan"), accepts=("an empty object", "revision")
    ),
    # the admin screen
    ("POST", "/admin/login"): Takes(
        "anyone",
        "form",
        lambda world: {
            "token": world.bootstrap_token,
            "name": "Els",
            "csrf_token": world.login_csrf,
        },
        free_text=("name",),
    ),
    ("POST", "/admin/registrations"): Takes(
        "admin-screen",
        "form",
        _admin_form("/admin/registrations"),
        numbers=("version",),
        free_text=("name", "client_id"),
        accepts=("version missing",),  # a form without one: saved unchecked, as the API's
    ),
    ("GET", "/admin/registrations/{registration_id}/delete"): Takes(
        "admin-screen", path={"registration_id": "ehr"}
    ),
    ("POST", "/admin/registrations/{registration_id}/delete"): Takes(
        "admin-screen",
        "form",
        _admin_page_form("/admin/registrations/ehr/delete", "/admin/registrations/ehr/delete"),
        numbers=("version",),
        # a post that does not confirm (no form, a form cut short) asks again: nothing removed
        accepts=("version missing", "JSON", "multipart cut short"),
        path={"registration_id": "ehr"},
    ),
    ("POST", "/admin/registrations/{registration_id}/test"): Takes(
        "admin-screen", path={"registration_id": "no-such-ehr"}
    ),
    ("POST", "/admin/hooks"): Takes(
        "admin-screen",
        "form",
        _admin_form("/admin/hooks"),
        numbers=("version",),
        accepts=("version missing",),  # a form without one: saved unchecked, as the API's
    ),
    ("POST", "/admin/partners"): Takes(
        "admin-screen",
        "form",
        _admin_form("/admin/partners"),
        numbers=("version",),
        accepts=("version missing",),  # a form without one: saved unchecked, as the API's
    ),
    ("POST", "/admin/plan"): Takes(
        "admin-screen",
        "form",
        _admin_form("/admin/plan"),
        numbers=("version",),
        free_text=("step-2.help.nl",),
        accepts=("version missing",),  # a form without one: saved unchecked, as the API's
    ),
    ("POST", "/admin/config"): Takes(
        "admin-screen",
        "form",
        _admin_form("/admin/config"),
        numbers=("version",),
        accepts=("version missing",),  # a form without one: saved unchecked, as the API's
    ),
    ("POST", "/admin/logout"): Takes("admin-screen"),
    # the social service's API
    ("GET", "/api/cases"): Takes("social-worker"),
    ("GET", "/api/cases/{case_id}"): Takes("social-worker", path={"case_id": "1"}),
    ("POST", "/api/cases/{case_id}/claim"): Takes(
        "social-worker", "json", lambda world: {"row_version": _version(world)}
    ),
    ("PUT", "/api/cases/{case_id}/assignment"): Takes(
        "social-worker",
        "json",
        lambda world: {"row_version": _version(world), "assignee": SOCIAL_WORKER},
    ),
    ("POST", "/api/cases/{case_id}/step-4"): Takes("social-worker", "json", _step_4),
    ("POST", "/api/cases/{case_id}/step-5"): Takes(
        "social-worker",
        "json",
        lambda world: {"row_version": _version(world), "progress": "improving"},
    ),
    ("POST", "/api/cases/{case_id}/step-6"): Takes(
        "social-worker",
        "json",
        lambda world: {
            "row_version": _version(world),
            "partner_id": "parket",
            "with_cooperation": False,
            "patient_informed": True,
        },
    ),
    ("POST", "/api/cases/{case_id}/close"): Takes(
        "social-worker",
        "json",
        lambda world: {"row_version": _version(world), "reason": "safety-restored"},
    ),
    ("PUT", "/api/cases/{case_id}/referral"): Takes(
        "social-worker",
        "json",
        lambda world: {"row_version": _version(world), "status": "revoked", "note": "Vergissing"},
    ),
    # the social service's screens
    ("GET", "/social"): Takes("social-worker"),
    # ``?saved=``, ``?reopening=``: what the page says of a save it returns from; another
    # value says nothing
    ("GET", "/social/cases/{case_id}"): Takes("social-worker", accepts=("?saved", "?reopening")),
    ("GET", "/social/cases/{case_id}/referral"): Takes("social-worker"),
    ("POST", "/social/cases/{case_id}/claim"): Takes(
        "social-worker",
        "form",
        _social_form({"back": "worklist"}),
        numbers=("row_version",),
        choices=("back",),
        accepts=("back",),  # where to go on: the worklist unless "case"
    ),
    ("POST", "/social/cases/{case_id}/{step}#step-4"): Takes(
        "social-worker",
        "form",
        _social_form(STEP_4_FORM),
        path={"step": "step-4"},
        # not "factor": its code is checked against the catalogue as the step is recorded,
        # after the case is read from the FHIR server (tests/integration/test_social_api.py)
        choices=("decision", "consultation", "key_person"),
        numbers=("row_version",),
        free_text=("patient_explanation", "team_members", "note"),
    ),
    ("POST", "/social/cases/{case_id}/{step}"): Takes(
        "social-worker",
        "form",
        _social_form(STEP_6_FORM),
        choices=("partner_id", "cooperation", "informed", "contact_channel"),
        numbers=("row_version",),
        dates=("contact_on",),
        free_text=("contact_person", "follow_up_actions", "note"),
        path={"step": "step-6"},
    ),
    ("POST", "/social/cases/{case_id}/close"): Takes(
        "social-worker",
        "form",
        _social_form({"reason": "safety-restored"}),
        choices=("reason",),
        numbers=("row_version",),
        free_text=("reason_text",),
    ),
    ("POST", "/social/cases/{case_id}/referral-status"): Takes(
        "social-worker",
        "form",
        _social_form({"referral_id": "sr-1", "status": "revoked", "note": "Vergissing"}),
        choices=("status",),
        numbers=("row_version",),
        free_text=("note",),
    ),
    # the monitoring figures
    ("GET", "/monitoring"): Takes("social-worker"),
    ("GET", "/monitoring.csv"): Takes("social-worker"),
    ("GET", "/monitoring/MeasureReport"): Takes("social-worker"),
}

#: ``#step-4``: a variant of the route before it, swept with another good path value.

#: Routes that take no input worth a sweep (no body, no query, no path value).
NO_INPUT = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


def _routes(app: FastAPI) -> list[tuple[str, str, Any]]:
    """Every route of the app (each method), as the default hospital serves it."""
    found: list[tuple[str, str, Any]] = []
    for context in iter_route_contexts(app.routes):
        path = context.path
        if path is None or path.startswith("/t/{tenant}"):
            continue  # the same routes for a hospital by name: swept at its unknown name
        route = context  # its dependant holds the parameters, its dependencies' too
        for method in sorted((context.methods or set()) - {"HEAD"}):
            found.append((method, path, route))
    return found


def _params(route: Any, kind: str) -> list[Any]:
    """The route's query or path parameters, its dependencies' included."""
    top: Dependant | None = getattr(route, "dependant", None)
    found: list[Any] = []
    dependants = [top] if top is not None else []
    while dependants:
        dependant = dependants.pop()
        found.extend(getattr(dependant, f"{kind}_params"))
        dependants.extend(dependant.dependencies)
    return list({param.alias: param for param in found}.values())


def _takes_input(method: str, route: Any) -> bool:
    return method != "GET" or bool(_params(route, "query") or _params(route, "path"))


def test_every_route_that_takes_input_is_swept(world: World) -> None:
    """A route added later that takes a body, a query or a path value fails here until it
    is in :data:`ROUTES` (who may call it, and a body it takes)."""
    taking = {
        (method, path)
        for method, path, route in _routes(world.app)
        if path not in NO_INPUT and _takes_input(method, route)
    }
    swept = {(method, path.split("#")[0]) for method, path in ROUTES}
    assert sorted(taking - swept) == []
    assert sorted(swept - taking) == []  # a route gone, or taking no more input


# -- the probes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """One bad request: what it is, and what it sends."""

    what: str
    body: bytes | None = None
    content_type: str | None = None
    query: str = ""
    path: dict[str, str] = field(default_factory=dict)  # path values replacing good ones
    prefix: str = ""
    #: a JSON API's body of 4 MiB and more: answered before the app reads it
    too_large: bool = False


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _schema_of(app: FastAPI, method: str, path: str) -> dict[str, Any]:
    """The JSON schema of the route's body in the OpenAPI document (empty: none declared)."""
    spec = app.openapi()
    operation = spec["paths"].get(path, {}).get(method.lower(), {})
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema", {})
    return _resolved(spec, schema)


def _resolved(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if "anyOf" in schema:  # an optional value: its kind when given
        given = [s for s in schema["anyOf"] if s.get("type") != "null"]
        if len(given) == 1:
            return _resolved(spec, given[0])
    return schema


def _wrong_type(schema: dict[str, Any], value: Any) -> Any:
    kind = schema.get("type")
    if kind is None:
        kind = {str: "string", bool: "boolean", int: "integer", list: "array", dict: "object"}.get(
            type(value), "string"
        )
    return {
        "string": 12345,
        "integer": "twelve",
        "number": "twelve",
        "boolean": "maybe",
        "array": {"not": "a list"},
        "object": ["not", "an object"],
    }.get(kind, [])


def _json_probes(world: World, method: str, path: str, takes: Takes) -> Iterator[Probe]:
    base = takes.base(world)
    body = _json(base)
    kind = "application/fhir+json" if takes.body == "fhir" else "application/json"
    yield Probe("malformed", b'{"row_version": , }', kind)
    yield Probe("cut short", body[: max(1, len(body) // 2)], kind)
    yield Probe("empty", b"", kind)
    yield Probe("an array", _json([base]), kind)
    yield Probe("a string", _json("an object, really"), kind)
    yield Probe("null", b"null", kind)
    yield Probe("a number", b"42", kind)
    yield Probe(
        "not UTF-8",
        re.sub(rb'": "', b'": "' + NOT_UTF_8, body, count=1)
        if b'": "' in body
        else b'{"' + NOT_UTF_8 + b'": 1}',
        kind,
    )
    yield Probe("not UTF-8, said as text", b'{"a": "' + NOT_UTF_8 + b'"}', "text/plain")
    yield Probe("too large", body + b" " * (MAX_BODY_BYTES + 1 - len(body)), kind, too_large=True)
    yield Probe("nested too deep", b"[" * 100_000 + b"]" * 100_000, kind)
    if not isinstance(base, dict):
        return
    schema = _schema_of(world.app, method, path)
    properties: dict[str, dict[str, Any]] = {
        name: _resolved(world.app.openapi(), s) for name, s in schema.get("properties", {}).items()
    } or {name: {} for name in base}
    required = schema.get("required", [])
    yield Probe("an empty object", b"{}", kind)
    for name, property_schema in properties.items():
        wrong = _wrong_type(property_schema, base.get(name))
        yield Probe(f"{name} of the wrong type", _json(base | {name: wrong}), kind)
        if (
            "enum" in property_schema
            or property_schema.get("type") == "string"
            or (not property_schema and isinstance(base.get(name), str))
        ):
            code = UNKNOWN_CODE if "enum" in property_schema else LONG
            what = "an unknown code" if "enum" in property_schema else "100 000 characters"
            if "enum" in property_schema or "maxLength" in property_schema or not schema:
                yield Probe(f"{name}: {what}", _json(base | {name: code}), kind)
    for name in required:
        yield Probe(f"{name} missing", _json({k: v for k, v in base.items() if k != name}), kind)


def _form(fields: dict[str, Any]) -> bytes:
    return urllib.parse.urlencode(fields, doseq=True).encode()


FORM = "application/x-www-form-urlencoded"


def _form_probes(world: World, takes: Takes) -> Iterator[Probe]:
    base = takes.base(world)
    assert isinstance(base, dict)
    body = _form(base)
    yield Probe("JSON", _json(base), "application/json")
    # in a field that takes a code or a number (free text of bytes that are no UTF-8 is
    # read as a browser does, each as U+FFFD)
    coded = next(iter((*takes.numbers, *takes.choices, *base)))
    rest = _form({k: v for k, v in base.items() if k != coded})
    yield Probe("no UTF-8", rest + f"&{coded}=".encode() + NOT_UTF_8, FORM)
    yield Probe("no UTF-8, percent-encoded", rest + f"&{coded}=%FF%FE%C3".encode(), FORM)
    boundary = "bad-input-boundary"
    yield Probe(
        "multipart cut short",
        f'--{boundary}\r\nContent-Disposition: form-data; name="row_version"\r\n\r\n1'.encode(),
        f"multipart/form-data; boundary={boundary}",
    )
    yield Probe("multipart with no boundary", b"--x\r\n", "multipart/form-data")
    yield Probe("too large", body + b"&pad=" + b"x" * MAX_BODY_BYTES, FORM)
    for name in takes.numbers:
        for value in ("twelve", "-1", "1.5", str(2**63)):
            yield Probe(f"{name}={value}", _form(base | {name: value}), FORM)
    for name in takes.dates:
        yield Probe(f"{name} not a date", _form(base | {name: "31/02/2026"}), FORM)
    for name in takes.choices:
        yield Probe(f"{name}: an unknown code", _form(base | {name: UNKNOWN_CODE}), FORM)
        yield Probe(f"{name}: 100 000 characters", _form(base | {name: LONG}), FORM)
    for name in takes.free_text:
        yield Probe(f"{name}: 100 000 characters", _form(base | {name: LONG}), FORM)
    for name in (*takes.choices[:1], *takes.numbers):
        if name in base:
            yield Probe(
                f"{name} missing", _form({k: v for k, v in base.items() if k != name}), FORM
            )


def _query_probes(route: Any) -> Iterator[Probe]:
    for param in _params(route, "query"):
        name = param.alias
        for value in ("twelve", UNKNOWN_CODE, "-1", str(2**63), LONG[:10_000], "%FF%FE"):
            raw = value if value.startswith("%") else urllib.parse.quote(value)
            yield Probe(f"?{name}={value[:20]}", query=f"{name}={raw}")
        yield Probe(f"?{name} twice", query=f"{name}=a&{name}=b")


def _path_probes(path: str) -> Iterator[Probe]:
    for name in re.findall(r"{(\w+)}", path):
        values = ["999999", "abc", "-1", "1.5", str(2**63), "%FF%FE", "x" * 2_000]
        for value in values:
            yield Probe(f"{{{name}}}={value[:20]}", path={name: value})
    yield Probe("an unknown hospital", prefix="/t/no-such-hospital")


def _probes(world: World, method: str, path: str, takes: Takes, route: Any) -> Iterator[Probe]:
    if takes.body in ("json", "fhir"):
        yield from _json_probes(world, method, path, takes)
    elif takes.body == "yaml":
        yaml = str(takes.base(world))
        yield Probe("not YAML", b"name: [unclosed", "application/yaml")
        yield Probe("cut short", yaml[: len(yaml) // 2].encode(), "application/yaml")
        yield Probe("a list", b"- name\n- AZ\n", "application/yaml")
        yield Probe("not UTF-8", NOT_UTF_8 + yaml.encode(), "application/yaml")
        yield Probe(
            "too large", yaml.encode() + b"#" * MAX_BODY_BYTES, "application/yaml", too_large=True
        )
    elif takes.body == "form":
        yield from _form_probes(world, takes)
    yield from _query_probes(route)
    yield from _path_probes(path)


# -- what a refusal must be ------------------------------------------------------------------

#: Columns a request may touch without writing anything: a session's last use.
VOLATILE = {"last_seen_at", "last_used_at", "expires_at", "idle_expires_at"}


def _snapshot(database: Database) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows (bar volatile columns); of the audit trail and the admin events,
    all but refusals: a refusal is recorded by design (who tried what)."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    with database.session() as session:
        for table in Base.metadata.sorted_tables:
            columns = [c for c in table.columns if c.name not in VOLATILE]
            query = select(*columns)
            if table.name == "audit_records":
                query = query.where(table.c.outcome != "failure")
            if table.name == "cds_seen_tokens":
                continue  # a CDS call's verified JWT, spent before its body is read: no replay
            if table.name == "admin_events":  # a refused sign-in: recorded by design
                query = query.where(table.c.action.not_like("%-refused"))
            tables[table.name] = sorted(map(tuple, session.execute(query)), key=repr)
    return tables


def _url(path: str, takes: Takes, world: World, probe: Probe) -> str:
    values = {"case_id": str(world.case_id)} | takes.path | probe.path
    filled = re.sub(r"{(\w+)}", lambda m: values.get(m.group(1), "1"), path)
    return probe.prefix + filled + (f"?{probe.query}" if probe.query else "")


def _send(world: World, method: str, path: str, takes: Takes, probe: Probe) -> httpx.Response:
    url = _url(path, takes, world, probe)
    headers = dict(world.headers[takes.who])
    if takes.who == "ehr":
        headers["Authorization"] = f"Bearer {EHR.token(PUBLIC_URL + url.split('?')[0])}"
    if probe.content_type:
        headers["Content-Type"] = probe.content_type
    client = world.admin_screen if takes.who == "admin-screen" else world.anyone
    if not _JSON_ROUTE.fullmatch(url.split("?")[0]):
        headers["Accept"] = "text/html,*/*;q=0.8"  # a browser's
    answer: httpx.Response = client.request(method, url, content=probe.body, headers=headers)
    return answer


#: The routes whose clients are programs: their errors are JSON.
_JSON_ROUTE = re.compile(
    r"(?:/t/[^/]+)?(?:/api(?:/.*)?|/admin/api(?:/.*)?|/cds-services(?:/.*)?|/readyz"
    r"|/monitoring/MeasureReport)"
)


def _assert_clear_refusal(path: str, probe: Probe, answer: httpx.Response) -> None:
    said = f"{probe.what}: {answer.status_code} {answer.text[:300]!r}"
    assert answer.status_code < 500, said
    assert "Traceback" not in answer.text, said
    assert 400 <= answer.status_code < 500, said
    kind = answer.headers.get("content-type", "")
    if _JSON_ROUTE.fullmatch(urllib.parse.urlsplit(str(answer.url)).path):
        assert "json" in kind, said
        error = answer.json()
        assert isinstance(error, dict), said
        # the APIs' {"detail"}, a FHIR OperationOutcome, CDS Hooks' {"error", "reason"}
        assert error.get("detail") or error.get("issue") or error.get("reason"), said
    elif answer.status_code == 413:
        assert kind.startswith("text/plain"), said
        assert "te groot" in answer.text, said
    elif "html" in kind:
        assert '<html lang="nl"' in answer.text, said
    else:
        assert kind.startswith("text/plain"), said
        assert answer.text.strip(), said


SWEPT = sorted(ROUTES)


@pytest.mark.parametrize(("method", "path"), SWEPT, ids=[f"{m} {p}" for m, p in SWEPT])
def test_bad_input_is_refused_clearly_and_writes_nothing(
    world: World, method: str, path: str
) -> None:
    takes = ROUTES[(method, path)]
    path = path.split("#")[0]  # a variant: the same route, another good path value
    route = next(r for m, p, r in _routes(world.app) if (m, p) == (method, path))
    failures = []
    for probe in _probes(world, method, path, takes, route):
        before = _snapshot(world.database)
        answer = _send(world, method, path, takes, probe)
        try:
            if answer.status_code < 400 and probe.what.startswith(takes.accepts or ("\0",)):
                continue  # a value the route ignores, or a default by design
            _assert_clear_refusal(path, probe, answer)
            assert _snapshot(world.database) == before, f"{probe.what}: written"
        except AssertionError as failure:
            failures.append(str(failure).splitlines()[0])
    assert failures == [], "\n".join(failure[:400] for failure in failures)
