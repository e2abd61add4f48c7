"""The EHR administrator's screen and JSON API (issue 6), mounted at ``/admin`` and
``/t/{tenant}/admin``.

Who may enter: an admin session of THIS tenant — opened with a one-time bootstrap token
(``kindreflex admin bootstrap``) and held as the cookie ``kindreflex_admin`` (with
``__Host-`` before it on https: :func:`admin_cookie`) or sent as
``Authorization: Bearer`` — or an app session launched from the tenant's EHR whose user
has the admin role (``smart_app.session``, role from the id_token). Anonymous → 401, a
nurse or social worker → 403, an admin of another hospital → 403.

CSRF: a request authenticated by a cookie must send the session's CSRF token (form field
``csrf_token`` or header ``X-CSRF-Token``) with every state-changing method; a bearer
token is not sent by the browser on its own, so API clients using it need none. The
sign-in form, which has no session yet, sends the sign-in page's own token (login CSRF:
:data:`LOGIN_COOKIE`).

Every change is one new configuration version (``service.admin.config.TenantAdmin``),
which is also its audit record; bad input → 4xx with the reason, and nothing is changed.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from markupsafe import Markup, escape
from starlette.datastructures import UploadFile

from service.admin import access, changes, dependents
from service.admin.config import (
    ConfigurationError,
    ConfigurationFile,
    Force,
    Problem,
    Reason,
    RegistrationsInUseError,
    StaleConfigurationError,
    StaleFileError,
    TenantAdmin,
    export_yaml,
    read_yaml,
    validate_document,
)
from service.admin.connection import check_connection
from service.admin.partners_io import export_bundle, export_csv, import_bundle, import_csv
from service.api.deps import DatabaseDep, SettingsDep, TenantDep
from service.db.base import Database
from service.fhir import terminology
from service.i18n import Language, negotiate, translate
from service.keys import purpose_key
from service.protocol import Step
from service.tenancy import SecretBox, TenantContext, TenantDirectory
from service.tenant_config import (
    ALL_HOOKS,
    DEFAULT_SCOPES,
    EhrRegistration,
    TenantConfiguration,
)
from service.text import without_bom
from smart_app.errors import PageError, Said, log_refusal, plan_field_label
from smart_app.pages import TEMPLATES, messages_by_field
from smart_app.security import form_token, iframe_cookie, page_headers, tokens_match
from smart_app.session import (
    SESSION_COOKIE,
    all_frame_origins,
    cookie_name,
    current_launch,
    end_launches,
    served_over_https,
    session_cookie,
)

ADMIN_COOKIE = "kindreflex_admin"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The screen's refusals whose page links to the sign-in page (``smart.<problem>.link``).
SIGN_IN_AGAIN = frozenset({"admin_session_missing", "admin_csrf_failed"})

router = APIRouter(tags=["admin"])


# ---------------------------------------------------------------------------------------
# Who is asking
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admin:
    """The administrator of the request's tenant."""

    tenant: TenantContext
    actor: str
    csrf: str
    by_cookie: bool
    session: access.AdminPrincipal | None  # None: signed in through an EHR launch


class AdminAuthError(Exception):
    """``reason``: the API's English text; ``problem``: the screen's page (``smart.*``)."""

    def __init__(self, status: int, reason: str, problem: str = "forbidden_role") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.problem = problem


def admin_cookie(request: Request) -> str:
    """The admin session cookie's name as served: ``__Host-`` on https, like the app
    session's (``cookie_name``): without it another app of the hospital's domain planted a
    ``kindreflex_admin`` that locked every launched admin out (found by review)."""
    return cookie_name(ADMIN_COOKIE, request.app.state.settings)


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _identify(request: Request, tenant: TenantContext) -> Admin:
    """The admin behind the request, or AdminAuthError(401/403) with the reason. The admin
    reads the hospital's configuration as the database holds it now, not this instance's
    copy: behind a load balancer, the version (ETag) another instance just gave must be the
    one read here too."""
    tenants: TenantDirectory = request.app.state.tenants
    tenant = tenants.get(tenant.slug, fresh=True)
    bearer = _bearer(request)
    token = bearer or request.cookies.get(admin_cookie(request))
    database = request.app.state.database
    if token:
        idle_limit = timedelta(minutes=request.app.state.settings.session_idle_minutes)
        principal = access.authenticate(database, token, idle_limit)
        if principal is None:
            raise AdminAuthError(401, "the admin session is unknown, ended or expired")
        if principal.tenant_id != tenant.id:
            raise AdminAuthError(403, "this admin session belongs to another hospital")
        return Admin(tenant, principal.actor, principal.csrf_token, bearer is None, principal)
    return _from_app_session(request, tenant)


def _from_app_session(request: Request, tenant: TenantContext) -> Admin:
    """An app session launched from the tenant's EHR, if its user has the admin role."""
    if not session_cookie(request):
        raise AdminAuthError(401, "sign in as an administrator first")
    try:
        launch = current_launch(request)
    except PageError as error:
        raise AdminAuthError(error.status, "sign in as an administrator first") from None
    if "admin" not in launch.user.roles:
        raise AdminAuthError(403, "this user does not have the admin role")
    actor = f"{launch.user.name} <{launch.actor}>"
    return Admin(tenant, actor, launch.csrf, True, None)


async def _check_csrf(request: Request, admin: Admin) -> None:
    if request.method in SAFE_METHODS or not admin.by_cookie:
        return
    presented = request.headers.get(CSRF_HEADER)
    content_type = request.headers.get("content-type", "")
    if presented is None and content_type.startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        presented = value if isinstance(value, str) else None
    if not tokens_match(presented, admin.csrf):
        # the admin's own page: the app's spoke of another patient and the patient's chart
        raise AdminAuthError(403, "missing or wrong CSRF token", "admin_csrf_failed")


async def api_admin(request: Request, tenant: TenantDep) -> Admin:
    """Dependency of the JSON API: 401/403 with the reason as JSON."""
    try:
        admin = await run_in_threadpool(_identify, request, tenant)
        await _check_csrf(request, admin)
    except AdminAuthError as error:
        raise HTTPException(error.status, error.reason) from None
    return admin


async def screen_admin(request: Request, tenant: TenantDep) -> Admin:
    """Dependency of the screen: anonymous → sign-in page; forbidden → 403 page."""
    try:
        admin = await run_in_threadpool(_identify, request, tenant)
        await _check_csrf(request, admin)
    except AdminAuthError as error:
        sign_in = f"{_prefix(request)}/admin/login"
        signing_out = request.url.path.endswith("/admin/logout")  # done already: no text
        if error.status == 401 and (request.method in SAFE_METHODS or signing_out):
            raise HTTPException(303, "sign in first", headers={"Location": sign_in}) from None
        # a page in the screen's language, not the API's English JSON; a form sent after
        # the session ended, or from a tab of an earlier sign-in, shows its text back (a
        # pasted YAML was lost) with the way to sign in again
        problem = "admin_session_missing" if error.status == 401 else error.problem
        raise PageError(
            error.status,
            problem,
            language=_language(request),
            frame_origins=all_frame_origins(tenant),
            logged={"reason": error.reason},
            link=sign_in if problem in SIGN_IN_AGAIN else None,
            role=Said("smart.role.admin"),
        ) from None
    return admin


ApiAdmin = Annotated[Admin, Depends(api_admin)]
ScreenAdmin = Annotated[Admin, Depends(screen_admin)]


def _prefix(request: Request) -> str:
    slug = request.path_params.get("tenant")
    return f"/t/{slug}" if slug else ""


def _tenant_admin(request: Request) -> TenantAdmin:
    tenants: TenantDirectory = request.app.state.tenants
    return TenantAdmin(tenants)


def _language(request: Request) -> Language:
    return negotiate([request.query_params.get("lang"), request.headers.get("accept-language")])


# ---------------------------------------------------------------------------------------
# Changing the configuration (shared by the API and the screen)
# ---------------------------------------------------------------------------------------


def _replace(config: TenantConfiguration, **parts: Any) -> TenantConfiguration:
    """The configuration with some parts replaced, validated again as a whole."""
    return validate_document({**dict(config), **parts})


#: A change of the configuration in force: the new one, or a file to import (whose
#: ``version`` is checked as ``based_on`` is: ``TenantAdmin.save``'s ``exported_from``).
Change = Callable[[TenantConfiguration], TenantConfiguration | ConfigurationFile]


async def _save(
    request: Request, admin: Admin, change: Change, based_on: int | None, force: Force = False
) -> TenantContext:
    """Apply ``change`` to the configuration in force NOW (not the one the request began
    with, so that a partial change never undoes another admin's) and store it, off the loop.
    ``force``: as ``TenantAdmin.save`` takes it (registrations removed or moved anyway)."""

    def work() -> TenantContext:
        tenants = _tenant_admin(request)
        current = tenants.current(admin.tenant.slug) or admin.tenant
        changed = change(current.config)
        file = changed if isinstance(changed, ConfigurationFile) else ConfigurationFile(changed)
        return tenants.save(
            admin.tenant.slug, file.config, admin.actor, based_on, file.exported_from, force
        )

    return await run_in_threadpool(work)


#: A configuration version as sent back by a client (API ``If-Match``, the screen's hidden
#: field): ASCII digits, nine at most. ``str.isdigit`` took "²" and numbers of thousands of
#: digits, which ``int`` refuses with a ValueError: a 500 instead of a refusal.
_VERSION = re.compile(r"[0-9]{1,9}")


def _version(value: str) -> int | None:
    """The version in ``value``; None when it is not one (the caller says so its own way)."""
    return int(value) if _VERSION.fullmatch(value) else None


def _if_match(request: Request) -> int | None:
    """The version an API client based its change on: ``If-Match: "7"`` (the ETag we sent)."""
    value = request.headers.get("if-match", "").removeprefix("W/").strip('"')
    if not value:
        return None
    version = _version(value)
    if version is None:
        raise HTTPException(400, 'If-Match must be a configuration version such as "7"')
    return version


def _outcome(
    status: int, problems: tuple[Problem, ...] | list[Problem], code: str = "invalid"
) -> JSONResponse:
    """An OperationOutcome naming each problem (line and path where known)."""
    issues = [
        {
            "severity": "error",
            "code": code,
            "diagnostics": str(problem),
            **({"expression": [problem.path]} if problem.path else {}),
        }
        for problem in problems
    ]
    return JSONResponse(
        {"resourceType": "OperationOutcome", "issue": issues},
        status_code=status,
        media_type="application/fhir+json",
    )


async def _api_change(
    request: Request, admin: Admin, change: Change, force: bool = False
) -> Response:
    try:
        context = await _save(request, admin, change, _if_match(request), force)
    except ConfigurationError as error:
        return _outcome(422, error.problems)
    except RegistrationsInUseError as error:  # one issue per registration, with its counts
        refusals = [Problem(s.refusal("send ?force=true")) for s in error.stranded]
        return _outcome(409, refusals, code="conflict")
    except StaleConfigurationError as error:
        status = 412 if request.headers.get("if-match") else 409
        return _outcome(status, [Problem(str(error))], code="conflict")
    return JSONResponse(_summary(context), headers=_etag(context))


def _summary(context: TenantContext) -> dict[str, Any]:
    return {"version": context.version, "plan_revision": context.config.plan.revision}


def _masked(config: TenantConfiguration) -> dict[str, Any]:
    """The configuration as JSON with client secrets masked (write-only)."""
    document = config.model_dump(mode="json")
    for stored, registration in zip(document["registrations"], config.registrations, strict=True):
        stored["client_secret"] = "***" if registration.client_secret else None
    return document


async def _json_body(request: Request) -> Any:
    try:
        return _parse_json(await request.body())
    except ValueError as error:
        raise HTTPException(400, f"the body is not JSON: {error}") from None


def _parse_json(body: bytes) -> Any:
    """JSON, ValueError when it is not. orjson, not json: json recurses once per level, and
    ``[[[[…`` a hundred thousand deep would be a RecursionError (a 500); orjson refuses
    nesting deeper than 1024 (and NaN or a lone surrogate, which are not JSON either)."""
    return orjson.loads(without_bom(body))


# ---------------------------------------------------------------------------------------
# JSON API
# ---------------------------------------------------------------------------------------


@router.post("/admin/api/session", status_code=201)
async def api_sign_in(request: Request, tenant: TenantDep, database: DatabaseDep) -> Any:
    """Spend a bootstrap token (``{"token": ..., "name": ...}``) on an admin session."""
    body = await _json_body(request)
    shape = 'expected {"token": "...", "name": "..."}'
    if not isinstance(body, dict) or not isinstance(body.get("token"), str):
        raise HTTPException(400, shape)
    name = body.get("name") or ""
    if not isinstance(name, str):
        raise HTTPException(400, shape)
    try:
        issued = await run_in_threadpool(
            access.redeem_bootstrap_token, database, tenant.id, body["token"], name
        )
    except access.InvalidNameError as error:
        raise HTTPException(422, str(error)) from None
    except access.AccessDeniedError as error:
        raise HTTPException(401, str(error)) from None
    return {
        "session_token": issued.token,
        "csrf_token": issued.csrf_token,
        "actor": issued.actor,
        "expires_at": issued.expires_at.isoformat(),
    }


@router.delete("/admin/api/session", status_code=204)
def api_sign_out(request: Request, admin: ApiAdmin, database: DatabaseDep) -> Response:
    response = Response(status_code=204)
    _sign_out(request, admin, database, response)
    return response


ForceChange = Annotated[
    bool,
    Query(
        description="Save the change even though it removes a registration, or moves one to "
        "another FHIR server (the same id), that undelivered writes or open cases depend on "
        "(the 409's count): they then stay undelivered, and the cases cannot be worked, "
        "until a registration with the same id and FHIR server is added again."
    ),
]

#: The answers of a change that may remove or move a registration (documented in OpenAPI).
IN_USE: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "Not saved: the change removes or moves (another FHIR server) a "
        "registration that undelivered writes (pending or waiting for a sign-in) or open cases "
        "on its FHIR server depend on; the OperationOutcome counts them, one issue per "
        "registration. Send `?force=true` to save it anyway. Also the answer when another "
        "change came in meanwhile (412 with If-Match)."
    }
}


@router.get("/admin/api/config")
def api_get_config(admin: ApiAdmin) -> JSONResponse:
    """The configuration in force; its ETag is the version to send back in ``If-Match``."""
    body = {**_summary(admin.tenant), "configuration": _masked(admin.tenant.config)}
    return JSONResponse(body, headers=_etag(admin.tenant))


def _etag(tenant: TenantContext) -> dict[str, str]:
    """Every part's GET carries the configuration version it was read from: the ``If-Match``
    of a ``PUT`` of that part, refused (412) when another change came in between."""
    return {"ETag": f'"{tenant.version}"'}


@router.put("/admin/api/config", responses=IN_USE)
async def api_put_config(request: Request, admin: ApiAdmin, force: ForceChange = False) -> Response:
    """Replace the whole configuration (a client secret left out or masked is kept while
    the registration's EHR and client stay the same: ``_with_kept_secrets``)."""
    body = await _json_body(request)
    registrations = body.get("registrations") if isinstance(body, dict) else None
    for registration in registrations if isinstance(registrations, list) else []:
        if isinstance(registration, dict) and registration.get("client_secret") == "***":
            registration.pop("client_secret")
    return await _api_change(request, admin, lambda _current: validate_document(body), force)


@router.get("/admin/api/config.yaml", response_class=PlainTextResponse)
def api_export_yaml(admin: ApiAdmin) -> Response:
    """The configuration as a file to import, naming its version (as the ETag does)."""
    return PlainTextResponse(
        export_yaml(admin.tenant.config, admin.tenant.version),
        media_type="application/yaml",
        headers=_etag(admin.tenant),
    )


@router.put("/admin/api/config.yaml", responses=IN_USE)
async def api_import_yaml(
    request: Request, admin: ApiAdmin, force: ForceChange = False
) -> Response:
    body = await request.body()
    return await _api_change(
        request, admin, lambda _current: read_yaml(_utf8(body, "utf-8")), force
    )


@router.get("/admin/api/registrations")
def api_registrations(admin: ApiAdmin, response: Response) -> list[dict[str, Any]]:
    response.headers.update(_etag(admin.tenant))
    registrations: list[dict[str, Any]] = _masked(admin.tenant.config)["registrations"]
    return registrations


@router.put("/admin/api/registrations/{registration_id}", responses=IN_USE)
async def api_put_registration(
    registration_id: str, request: Request, admin: ApiAdmin, force: ForceChange = False
) -> Response:
    """Create or replace one registration (its ``id`` is the path's); one moved to another
    FHIR server while anything depends on it is refused (409) unless ``force=true``."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise HTTPException(400, "expected a registration object")
    if body.get("client_secret") == "***":
        body.pop("client_secret")
    body["id"] = registration_id
    return await _api_change(request, admin, lambda c: _upsert_registration(c, body), force)


def _upsert_registration(
    config: TenantConfiguration, body: Mapping[str, Any]
) -> TenantConfiguration:
    others = [dict(r) for r in config.registrations if r.id != body["id"]]
    position = next((i for i, r in enumerate(config.registrations) if r.id == body["id"]), None)
    registrations: list[Any] = list(others)
    registrations.insert(len(others) if position is None else position, dict(body))
    return _replace(config, registrations=registrations)


ForceRemoval = Annotated[
    bool,
    Query(
        description="Remove the registration even though undelivered writes or open cases "
        "depend on it (the 409's count): they then stay undelivered, and the cases cannot "
        "be worked, until a registration with the same id and FHIR server is added again."
    ),
]


@router.delete(
    "/admin/api/registrations/{registration_id}",
    responses={
        404: {"description": "No registration with this id."},
        409: {
            "description": "Not removed: undelivered writes through the registration (pending "
            "or waiting for a sign-in) or open cases on its FHIR server depend on it; the "
            "OperationOutcome counts them. Send `?force=true` to remove it anyway."
        },
    },
)
async def api_delete_registration(
    registration_id: str, request: Request, admin: ApiAdmin, force: ForceRemoval = False
) -> Response:
    """Remove a registration. A nurse's save waiting for a sign-in is sent only by a later
    launch through the same registration, and a case is worked only from an EHR
    registered with its FHIR server: while any depends on it, the removal is refused (409,
    with how many) unless ``force=true``; forced, the admin events record what was left
    (``TenantAdmin.save``, as for every change that removes a registration)."""
    if admin.tenant.config.registration_by_id(registration_id) is None:
        raise HTTPException(404, f"no registration '{registration_id}'")
    return await _api_change(
        request, admin, lambda c: _without_registration(c, registration_id), force
    )


def _without_registration(config: TenantConfiguration, registration_id: str) -> TenantConfiguration:
    kept = [r for r in config.registrations if r.id != registration_id]
    return _replace(config, registrations=kept)


@router.post("/admin/api/registrations/{registration_id}/test-connection")
def api_test_connection(
    registration_id: str,
    request: Request,
    admin: ApiAdmin,
    settings: SettingsDep,
    database: DatabaseDep,
) -> dict[str, Any]:
    """Ask the EHR what it supports; the sentences in ``?lang=`` or Accept-Language."""
    return _test_connection(
        request, admin, settings.fhir_timeout_seconds, database, registration_id
    )


def _test_connection(
    request: Request, admin: Admin, timeout: float, database: Database, registration_id: str
) -> dict[str, Any]:
    registration = admin.tenant.config.registration_by_id(registration_id)
    if registration is None:
        raise HTTPException(404, f"no registration '{registration_id}'")
    report = check_connection(registration, _language(request), timeout)
    with database.session() as session:
        access.record_event(
            session, admin.tenant.id, admin.actor, "test-connection",
            registration=registration_id, iss=report.iss, ready=report.ready,
        )  # fmt: skip
    return report.as_json()


@router.get("/admin/api/hooks")
def api_get_hooks(admin: ApiAdmin, response: Response) -> dict[str, Any]:
    response.headers.update(_etag(admin.tenant))
    return admin.tenant.config.hooks.model_dump(mode="json")


@router.put("/admin/api/hooks")
async def api_put_hooks(request: Request, admin: ApiAdmin) -> Response:
    body = await _json_body(request)
    return await _api_change(request, admin, lambda c: _replace(c, hooks=body))


@router.get("/admin/api/partners")
def api_get_partners(admin: ApiAdmin, format: str = "json") -> Response:
    """The partner directory as ``json`` (the configuration's form), ``csv`` or ``bundle``."""
    partners, etag = admin.tenant.config.partners, _etag(admin.tenant)
    if format == "csv":
        return PlainTextResponse(
            export_csv(partners),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="partners.csv"', **etag},
        )
    if format == "bundle":
        bundle = export_bundle(partners)
        return JSONResponse(bundle, media_type="application/fhir+json", headers=etag)
    if format == "json":
        return JSONResponse(partners.model_dump(mode="json", exclude_none=True), headers=etag)
    raise HTTPException(400, "format must be json, csv or bundle")


@router.put("/admin/api/partners")
async def api_put_partners(request: Request, admin: ApiAdmin) -> Response:
    """Replace the directory: ``text/csv``, a FHIR Bundle, or the configuration's JSON."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    body = await request.body()
    return await _api_change(request, admin, lambda c: _imported_partners(c, content_type, body))


def _imported_partners(
    config: TenantConfiguration, content_type: str, body: bytes
) -> TenantConfiguration:
    if content_type == "text/csv":
        partners: Any = import_csv(_utf8(body, "utf-8-sig"), config.partners.region)
    else:
        try:
            data = _parse_json(body)
        except ValueError as error:
            not_json = (Reason.of("admin.problem.not-json", detail=error),)
            raise ConfigurationError([Problem(f"not JSON: {error}", reasons=not_json)]) from None
        is_bundle = isinstance(data, dict) and data.get("resourceType") == "Bundle"
        partners = import_bundle(data) if is_bundle else data
    return _replace(config, partners=partners)


def _utf8(body: bytes, encoding: str) -> str:
    """The uploaded text; a byte that is not UTF-8 is refused, not replaced by '�' and saved
    into a name or a phone number."""
    try:
        return body.decode(encoding)
    except UnicodeDecodeError as error:
        message = f"the text is not UTF-8 (byte {error.start} cannot be read)"
        not_utf8 = (Reason.of("admin.problem.not-utf8", byte=error.start),)
        raise ConfigurationError([Problem(message, reasons=not_utf8)]) from None


@router.get("/admin/api/plan")
def api_get_plan(admin: ApiAdmin, response: Response) -> dict[str, Any]:
    response.headers.update(_etag(admin.tenant))
    return admin.tenant.config.plan.model_dump(mode="json", exclude_none=True)


@router.put("/admin/api/plan")
async def api_put_plan(request: Request, admin: ApiAdmin) -> Response:
    """Replace the plan's wording; the revision is raised when the wording changed."""
    body = await _json_body(request)
    if isinstance(body, dict):
        body = {**body, "revision": admin.tenant.config.plan.revision}
    return await _api_change(request, admin, lambda c: _replace(c, plan=body))


@router.get("/admin/api/audit")
def api_audit(admin: ApiAdmin, request: Request, database: DatabaseDep) -> dict[str, Any]:
    """Configuration changes (who, when, old → new, secrets masked) and admin events."""
    return {
        "changes": [
            {
                "version": change.version,
                "actor": change.actor,
                "at": change.at.isoformat(),
                "changes": [c.__dict__ for c in change.changes],
            }
            for change in _history(request, admin)
        ],
        "events": [
            {"at": e.at.isoformat(), "actor": e.actor, "action": e.action, "detail": e.detail}
            for e in access.events(database, admin.tenant.id)
        ],
    }


def _history(request: Request, admin: Admin) -> list[changes.ConfigChange]:
    settings = request.app.state.settings
    database = request.app.state.database
    return changes.history(database, SecretBox(settings.secret_key), admin.tenant.id)


# ---------------------------------------------------------------------------------------
# The screen (Dutch first)
# ---------------------------------------------------------------------------------------


def _page(
    request: Request, tenant: TenantContext, template: str, status: int = 200, **values: Any
) -> HTMLResponse:
    language = _language(request)

    def t(message_id: str, **fill: object) -> str:
        return translate(language, message_id, **fill)

    html = TEMPLATES.get_template(template).render(
        t=t, lang=language, prefix=_prefix(request), tenant=tenant, **values
    )
    frame = [o for r in tenant.config.registrations for o in r.frame_origins]
    return HTMLResponse(html, status_code=status, headers=page_headers(frame))


@dataclass(frozen=True)
class ScreenError:
    """A problem of a refused save as the screen shows it: the sentence in the page's
    language, next to the field it concerns (its id; "" when it concerns no one field:
    then in the page's error summary only), as ``_fields.html`` renders such errors."""

    field: str
    message: Markup


#: Which field of the screen a problem concerns (its id in ``admin/index.html``), or "".
FieldOf = Callable[[Problem], str]


def _no_field(_problem: Problem) -> str:
    return ""


def _say(language: Language, problem: Problem, field: Markup | None = None) -> Markup:
    """The problem in ``language``: where (a line, row or Bundle entry; the path) and why,
    the sentences from the catalogues (escaped, like any text of the page), the technical
    data in them as ``<code>`` (escaped too: a YAML file's words are the admin's input).

    ``field``: the form's field it concerns, as the page labels it (:func:`_field_place`):
    said instead of the configuration's path, which names no field the admin sees."""

    def say(message_id: str, **values: object) -> Markup:
        data = {name: Markup("<code>{}</code>").format(value) for name, value in values.items()}
        return escape(translate(language, message_id)).format(**data)

    where: list[Markup] = []
    if field is not None:
        where.append(field)
    elif problem.place is not None:
        unit, number = problem.place
        where.append(escape(translate(language, f"admin.problem.at-{unit}", n=number)))
    elif problem.line is not None:
        where.append(escape(translate(language, "admin.problem.at-line", line=problem.line)))
    if problem.path and problem.place is None and field is None:
        where.append(Markup("<code>{}</code>").format(problem.path))
    reasons = problem.reasons or (Reason.of("admin.problem.rejected", detail=problem.message),)
    what = Markup("; ").join(
        Markup("<code>{}</code>: {}").format(r.field, say(r.code, **dict(r.values)))
        if r.field and field is None  # in a form, the line of a list is in ``field``
        else say(r.code, **dict(r.values))
        for r in reasons
    )
    if not where:
        return what
    sentence = escape(translate(language, "admin.problem.where"))
    return sentence.format(where=Markup(", ").join(where), what=what)


def _screen_errors(
    language: Language,
    problems: Sequence[Problem],
    field_of: FieldOf,
    typed: Mapping[str, Any] | None = None,
) -> tuple[list[ScreenError], dict[str, Markup]]:
    """The summary's errors, and each field's messages (``error_for`` of ``_fields.html``)."""
    errors = []
    for problem in problems:
        field = field_of(problem)
        place = _field_place(language, field, problem, typed)
        errors.append(ScreenError(field, _say(language, problem, place)))
    return errors, messages_by_field(errors)


#: The registration form's fields typed one item per line (``_lines``).
_LINE_FIELDS = frozenset({"cds_issuers", "frame_origins"})


def _field_label(language: Language, field: str) -> str | None:
    """The label the page shows the field ``field`` (its id) with; None for the YAML text
    and the partner file, whose problems keep their line, row or path: that is what the
    admin edits there."""
    if field in ("adult_age", "once_per_encounter", "source_url"):
        return translate(language, f"admin.hooks.{field}")
    if field.startswith("hook-"):
        return f"{field.removeprefix('hook-')} — {translate(language, 'admin.hooks.enabled')}"
    if plan := plan_field_label(language, field):
        return plan
    key = field.rsplit("-", 1)[-1]
    if field.count("-") and key in _REGISTRATION_FIELDS:
        return translate(language, f"admin.registration.{key}")
    return None


def _field_place(
    language: Language, field: str, problem: Problem, typed: Mapping[str, Any] | None
) -> Markup | None:
    """Where in the form the problem is: the field's label, and in a list typed one item per
    line the item's line as typed (blank lines are skipped when it is read). None: the
    problem says its own place (:func:`_field_label`)."""
    label = _field_label(language, field) if field else None
    if label is None:
        return None
    key = field.rsplit("-", 1)[-1]
    fields = typed.get("fields") if typed else None
    item = _item(problem)
    if key in _LINE_FIELDS and isinstance(fields, Mapping) and item is not None:
        text = str(fields.get(key, ""))
        lines = [n for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
        if item < len(lines):
            said = translate(language, "admin.problem.field-line", label=label, line=lines[item])
            return escape(said)
    return escape(label)


def _item(problem: Problem) -> int | None:
    """The list item a registration field's problem is about: ``registrations[1].frame_origins``
    with the reason's ``[2]``, or ``registrations[1].cds_issuers[2].iss``; None: no item."""
    inside = re.sub(r"^registrations\[\d+\]\.\w+", "", problem.path)
    if not inside and problem.reasons:
        inside = problem.reasons[0].field
    found = re.match(r"\[(\d+)\]", inside)
    return int(found.group(1)) if found else None


def _in_yaml(_problem: Problem) -> str:
    return "yaml"


def _in_partners_file(_problem: Problem) -> str:
    return "partners-file"


_HOOK_FIELDS = {
    "hooks.adult_age": "adult_age",
    "hooks.once_per_encounter": "once_per_encounter",
    "hooks.enabled": f"hook-{ALL_HOOKS[0]}",
    "hooks.source_url": "source_url",
}


def _in_hooks_form(problem: Problem) -> str:
    return _HOOK_FIELDS.get(problem.path.split("[")[0], "")


def _in_plan_form(problem: Problem) -> str:
    """``plan.steps.step-1.title.nl`` → the input ``step-1.title.nl``."""
    rest = problem.path.removeprefix("plan.steps.")
    return rest if rest != problem.path and rest.count(".") == 2 else ""


#: The registration form's fields; each field's id is ``<registration id>-<field>``.
_REGISTRATION_FIELDS = frozenset(
    {"id", "name", "fhir_base_url", "client_id", "client_auth", "client_secret", "scopes",
     "cds_issuers", "frame_origins", "default_language"}
)  # fmt: skip


def _in_registration_form(form: str, index: int) -> FieldOf:
    """Problems at ``registrations[<index>].<field>…``: that field of the form ``form``."""
    at = f"registrations[{index}]."

    def field_of(problem: Problem) -> str:
        if not problem.path.startswith(at):
            return ""
        key = re.split(r"[.\[]", problem.path.removeprefix(at))[0]
        return f"{form}-{key}" if key in _REGISTRATION_FIELDS else ""

    return field_of


#: The sign-in form's own CSRF cookie (the form has no session yet: login CSRF, OWASP): a
#: random nonce, ``__Host-`` on https and ``SameSite=Strict`` as the admin cookie; the form's
#: hidden ``csrf_token`` is an HMAC of it (``security.form_token``).
LOGIN_COOKIE = "kindreflex_admin_login"
#: How long a sign-in page may stay open before its form is refused (and shown again).
LOGIN_FORM_SECONDS = 60 * 60
_LOGIN_NONCE = re.compile(r"[A-Za-z0-9_\-]{43}")  # secrets.token_urlsafe(32)
#: The key of the sign-in forms without ``KINDREFLEX_SECRET_KEY`` (the demo, a trial on
#: this machine): this process's own, so a page another process served is refused.
_PROCESS_LOGIN_KEY = secrets.token_bytes(32)


def login_cookie(request: Request) -> str:
    return cookie_name(LOGIN_COOKIE, request.app.state.settings)


def _login_csrf(request: Request, tenant: TenantContext, nonce: str) -> str:
    """The hidden field that goes with the cookie ``nonce`` on this hospital's sign-in."""
    secret_key = request.app.state.settings.secret_key
    key = purpose_key(secret_key, "admin-sign-in") if secret_key else _PROCESS_LOGIN_KEY
    return form_token(key, tenant.slug, nonce)


def _login_page(
    request: Request, tenant: TenantContext, status: int = 200, problem: str | None = None
) -> HTMLResponse:
    """The sign-in page, with its CSRF cookie and field: the browser's nonce when it holds
    one (the sign-in page open in another tab, of another hospital too, stays good), else a
    new one; its lifetime starts again."""
    nonce = request.cookies.get(login_cookie(request), "")
    if not _LOGIN_NONCE.fullmatch(nonce):
        nonce = secrets.token_urlsafe(32)
    csrf = _login_csrf(request, tenant, nonce)
    response = _page(
        request, tenant, "admin/login.html", status=status, problem=problem, csrf_token=csrf
    )
    response.set_cookie(
        login_cookie(request),
        nonce,
        max_age=LOGIN_FORM_SECONDS,
        path="/",
        secure=served_over_https(request.app.state.settings),
        httponly=True,
        samesite="strict",
    )
    return response


def _login_refusal(request: Request, tenant: TenantContext, presented: str) -> str | None:
    """Why a sign-in form is refused before its token is looked at, or None: sent from
    another site (``Sec-Fetch-Site``), or without the cookie and field of our sign-in page
    (another site's form, a page open too long, cookies blocked)."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        return "sent from another site"
    nonce = request.cookies.get(login_cookie(request), "")
    if not _LOGIN_NONCE.fullmatch(nonce):
        return "no sign-in cookie"
    if not tokens_match(presented, _login_csrf(request, tenant, nonce)):
        return "missing or wrong CSRF token"
    return None


@router.get("/admin/login", response_class=HTMLResponse)
def login_page(request: Request, tenant: TenantDep) -> HTMLResponse:
    return _login_page(request, tenant)


@router.post("/admin/login", response_class=HTMLResponse)
def login(
    request: Request,
    tenant: TenantDep,
    database: DatabaseDep,
    token: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """Spend a bootstrap token on an admin session, if the form is our sign-in page's.

    Decision (login CSRF): another site's page could post the attacker's token and sign
    the victim's browser into the attacker's session, where she would then type what the
    attacker reads. A form from elsewhere is refused before the token is looked at: the
    page again, saying so, nothing written (the token stays good), the refusal logged as
    every CSRF refusal is."""
    refused = _login_refusal(request, tenant, csrf_token)
    if refused is not None:
        log_refusal(403, "admin_login_csrf_failed", tenant=tenant.slug, reason=refused)
        return _login_page(request, tenant, status=403, problem="csrf")
    try:
        issued = access.redeem_bootstrap_token(database, tenant.id, token.strip(), name)
    except access.InvalidNameError:
        return _login_page(request, tenant, status=422, problem="bad-name")
    except access.AccessDeniedError:
        return _login_page(request, tenant, status=401, problem="refused")
    response = RedirectResponse(f"{_prefix(request)}/admin", status_code=303)
    response.set_cookie(
        admin_cookie(request),
        issued.token,
        max_age=int(access.SESSION_TTL.total_seconds()),
        path="/",
        secure=served_over_https(request.app.state.settings),
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/admin/logout")
def logout(request: Request, admin: ScreenAdmin, database: DatabaseDep) -> Response:
    response = RedirectResponse(f"{_prefix(request)}/admin/login", status_code=303)
    response.delete_cookie(
        admin_cookie(request), path="/", secure=served_over_https(request.app.state.settings)
    )
    _sign_out(request, admin, database, response)
    return response


def _sign_out(request: Request, admin: Admin, database: Database, response: Response) -> None:
    """End the admin's session at once: the bootstrap sign-in's, or the EHR launches the
    browser holds (all its user's). A launch is the app's session too: on a shared
    workstation, signing out must not leave the worklist open behind the sign-in page."""
    if admin.session is not None:
        access.end_session(database, admin.session)
        return
    with database.session() as session:  # signed out and audited, or neither
        end_launches(session, session_cookie(request) or "")
        access.record_event(session, admin.tenant.id, admin.actor, "admin-signed-out")
    name = cookie_name(SESSION_COOKIE, request.app.state.settings)
    response.headers.append("set-cookie", iframe_cookie(name, "", 0))


@router.get("/admin", response_class=HTMLResponse)
def overview(request: Request, admin: ScreenAdmin) -> HTMLResponse:
    """The screen; after a save (``?saved=<version>``) at least that version: another
    instance serving the redirect may hold an older one for up to ``REFRESH_SECONDS``, and
    showed "saved" over the values before it, whose next save was then refused as stale."""
    saved = _version(request.query_params.get("saved", ""))
    tenant = admin.tenant
    if saved is not None and tenant.version < saved:
        tenants: TenantDirectory = request.app.state.tenants
        tenant = tenants.get(tenant.slug, at_least=saved)
    return _overview(request, admin, saved=saved is not None, tenant=tenant)


def _overview(
    request: Request,
    admin: Admin,
    *,
    status: int = 200,
    problems: tuple[Problem, ...] = (),
    saved: bool = False,
    report: dict[str, Any] | None = None,
    tenant: TenantContext | None = None,
    typed: Mapping[str, Any] | None = None,
    field_of: FieldOf = _no_field,
    in_use: RegistrationsInUseError | None = None,
) -> HTMLResponse:
    """The screen; ``in_use``: a save refused for what depends on the registrations it
    removes or moves, said in the form that was sent (``typed``), with a way to go ahead."""
    tenant = tenant or admin.tenant
    language = _language(request)
    errors, error_for = _screen_errors(language, problems, field_of, typed)
    return _page(
        request,
        tenant,
        "admin/index.html",
        status=status,
        admin=admin,
        config=tenant.config,
        all_hooks=ALL_HOOKS,
        default_scopes=DEFAULT_SCOPES,  # a new registration's, as the API's and a file's
        # each step named as the case pages name it, in the screen's language
        steps=[
            (step, terminology.display("kindreflex-step", step.value, language)) for step in Step
        ],
        errors=errors,
        error_for=error_for,
        saved=saved,
        report=report,
        typed=typed,
        in_use=in_use,
        shown_writes=_SHOWN_WRITES,
        shown_cases=_SHOWN_CASES,
        history=_history(request, admin)[:20],
        yaml_text=export_yaml(tenant.config, tenant.version),
    )


async def _screen_change(
    request: Request,
    admin: Admin,
    change: Change,
    typed: Mapping[str, Any] | None = None,
    field_of: FieldOf = _no_field,
    not_kept: tuple[Problem, ...] = (),
    force: Force | None = None,
) -> Response:
    """Save a change from the screen; refused, the page again with ``typed`` (which form,
    what was typed in it) kept, each problem next to its field (``field_of``), and
    ``not_kept``: what the page cannot show again (a typed secret), to be typed again.
    Saved, the screen by GET (post/redirect/get): the page a save returned, reloaded, sent
    the form again and was told the configuration had changed meanwhile (found by review)."""
    form = await request.form()
    based_on = str(form.get("version", ""))
    number = _version(based_on) if based_on else None
    if based_on and number is None:  # only a forged form: the page's error, the input kept
        forged = Problem("not a configuration version", reasons=(Reason("admin.bad-version"),))
        return _overview(request, admin, status=400, problems=(forged,), typed=typed)
    try:
        context = await _save(
            request, admin, change, number, _confirmed(form) if force is None else force
        )
    except ConfigurationError as error:
        problems = (*error.problems, *not_kept)
        return _overview(
            request, admin, status=422, problems=problems, typed=typed, field_of=field_of
        )
    except RegistrationsInUseError as error:
        # the form again as typed, saying what depends on them and asking to go ahead
        problems = (*(_in_use(s) for s in error.stranded), *not_kept)
        return _overview(
            request, admin, status=409, problems=problems, typed=typed, field_of=field_of,
            in_use=error,
        )  # fmt: skip
    except StaleConfigurationError as error:
        # "it is still in the form" only where the form is drawn again as typed: a file
        # input cannot be, nor a button's (found by review)
        message_id = "admin.stale" if typed is not None else "admin.stale-again"
        reason = Reason.of(message_id, version=error.current_version)
        if isinstance(error, StaleFileError):  # the text names a version no longer in force
            reason = Reason.of(
                "admin.stale-file", file=error.exported_from, version=error.current_version
            )
        stale = Problem(str(error), reasons=(reason,))
        problems = (stale, *not_kept)
        return _overview(
            request, admin, status=409, problems=problems, typed=typed, field_of=field_of
        )
    return RedirectResponse(f"{_prefix(request)}/admin?saved={context.version}", status_code=303)


#: The fields of a form sent back confirmed: what the page said depends on the registrations
#: the change removes or moves (``admin/_in_use.html``, the removal's page).
_SHOWN_WRITES, _SHOWN_CASES = "shown_writes", "shown_cases"


def _confirmed(form: Mapping[str, Any]) -> Force:
    """A form confirmed on the page that said what depends on the registrations it removes
    or moves: saved unless more depends on them now (asked again). Else: not forced."""
    return _shown(form) if form.get("force") == "yes" else False


def _shown(form: Mapping[str, Any]) -> dependents.Dependents:
    """What the page the form was sent from said depends on the registration(s)."""
    return dependents.Dependents(
        pending=_count(form.get(_SHOWN_WRITES)), cases=_count(form.get(_SHOWN_CASES))
    )


def _count(value: object) -> int:
    """A count the confirmation page sent back; 0 when it is none (a forged form)."""
    number = _version(value) if isinstance(value, str) else None
    return number or 0


def _in_use(stranded: dependents.Stranded) -> Problem:
    """A registration a refused save removes or moves, in the summary (what depends on it
    is said beside the form, ``admin/_in_use.html``)."""
    registration, to = stranded.registration, stranded.moved_to
    message_id = "admin.in-use.removed" if to is None else "admin.in-use.moved"
    reason = Reason.of(message_id, id=registration.id, url=registration.fhir_base_url, to=to or "")
    return Problem(stranded.refusal("confirm it"), reasons=(reason,))


def _lines(value: str) -> list[str]:
    return [line.strip() for line in value.splitlines() if line.strip()]


def _issuers(typed: str, existing: EhrRegistration | None) -> list[dict[str, Any]]:
    """The form's issuers (one line each: ``iss`` and its ``jku`` URLs), with what the form
    does not show kept for an issuer still listed: its configured keys (``jwks``) and its
    allowed CDS client ids (``subjects``). Else a save of the form (a name edit) dropped
    them: an issuer without a ``jku`` could verify no call, and any client id was let in."""
    kept = {issuer.iss: issuer for issuer in existing.cds_issuers} if existing else {}
    issuers: list[dict[str, Any]] = []
    for iss, *jku in (line.split() for line in _lines(typed)):
        issuer: dict[str, Any] = {"iss": iss, "jku": jku}
        if (before := kept.get(iss)) is not None:
            issuer |= {"jwks": before.jwks, "subjects": before.subjects}
        issuers.append(issuer)
    return issuers


@router.post("/admin/registrations", response_class=HTMLResponse)
async def save_registration(request: Request, admin: ScreenAdmin) -> Response:
    form = await request.form()
    field = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    body: dict[str, Any] = {
        key: field.get(key, "").strip()
        for key in ("id", "name", "fhir_base_url", "client_id", "client_auth", "scopes",
                    "default_language")
    }  # fmt: skip
    if field.get("client_secret"):
        body["client_secret"] = field["client_secret"]
    body["frame_origins"] = _lines(field.get("frame_origins", ""))
    registrations = admin.tenant.config.registrations
    adding = field.get("form") == "new"  # the new registration's form, whatever id it typed
    existing = None if adding else admin.tenant.config.registration_by_id(body["id"])
    body["cds_issuers"] = _issuers(field.get("cds_issuers", ""), existing)
    if existing is not None:  # kept: the form does not show them
        body["roles"] = existing.roles
        body["own_redirect_uri"] = existing.own_redirect_uri
    form_id = existing.id if existing else "new"
    typed = {"registration": form_id, "fields": field}
    index = registrations.index(existing) if existing else len(registrations)
    # a secret is never drawn again: refused, sent again as it is shown, the save kept the
    # stored one and said "saved", the new secret lost (found by review)
    retype = Reason("admin.problem.secret-retype")
    at = f"registrations[{index}].client_secret"
    not_kept = (Problem("type the client secret again", at, reasons=(retype,)),)
    return await _screen_change(
        request,
        admin,
        lambda c: _added_registration(c, body) if adding else _upsert_registration(c, body),
        typed,
        _in_registration_form(form_id, index),
        not_kept if "client_secret" in body else (),
    )


def _added_registration(
    config: TenantConfiguration, body: Mapping[str, Any]
) -> TenantConfiguration:
    """A registration of the new registration's form, refused when its id is in use: it
    replaced that registration, its client secret dropped and its sessions ended, and
    said "saved". Checked on the configuration in force now, as every change is."""
    if config.registration_by_id(body["id"]) is not None:
        at = f"registrations[{len(config.registrations)}].id"
        taken = Reason.of("admin.problem.registration-id-taken", id=body["id"])
        message = f"the registration id {body['id']} is in use; choose another"
        raise ConfigurationError([Problem(message, at, reasons=(taken,))])
    return _upsert_registration(config, body)


@router.get("/admin/registrations/{registration_id}/delete", response_class=HTMLResponse)
def confirm_removal(
    registration_id: str, request: Request, admin: ScreenAdmin, database: DatabaseDep
) -> HTMLResponse:
    """The question before a registration is removed, with what depends on it.

    Decision: asked also when nothing depends on it, as a removal that cannot be undone
    is asked for elsewhere: the registration's client secret (typed again to add it back),
    roles and CDS issuers go with it, its users' sessions end, and the button sits beside
    "Test the connection". The page says then that nothing depends on it."""
    return _removal_page(request, admin, database, registration_id)


@router.post("/admin/registrations/{registration_id}/delete", response_class=HTMLResponse)
async def delete_registration(
    registration_id: str, request: Request, admin: ScreenAdmin, database: DatabaseDep
) -> Response:
    """Remove the registration once the admin confirmed it on the page that said what
    depends on it; a form without that confirmation (a tab of the screen of before, which
    removed it at one click) gets the question. More depending on it now than the page
    said (a save waiting since): asked again, with the new count."""
    form = await request.form()
    if form.get("confirmed") != "yes":
        return await run_in_threadpool(_removal_page, request, admin, database, registration_id)
    config = admin.tenant.config
    if config.registration_by_id(registration_id) is None:  # removed meanwhile: said so
        return await run_in_threadpool(_removal_page, request, admin, database, registration_id)
    depending = await run_in_threadpool(
        dependents.on_registration, database, admin.tenant.id, config, registration_id
    )
    shown = _shown(form)
    if depending.more_than(shown):
        return await run_in_threadpool(
            _removal_page, request, admin, database, registration_id, True
        )
    # confirmed: the save records it as removed anyway when anything depended on it
    return await _screen_change(
        request, admin, lambda c: _without_registration(c, registration_id), force=shown
    )


def _removal_page(
    request: Request,
    admin: Admin,
    database: Database,
    registration_id: str,
    grown: bool = False,
) -> HTMLResponse:
    """The confirmation page; ``grown``: more depends on it than the page said before (409).
    A registration no longer there (another admin removed it): the screen says so (404)."""
    registration = admin.tenant.config.registration_by_id(registration_id)
    if registration is None:
        gone = Reason.of("admin.remove.gone", id=registration_id)
        problem = Problem(f"no registration '{registration_id}'", reasons=(gone,))
        return _overview(request, admin, status=404, problems=(problem,))
    depending = dependents.on_registration(
        database, admin.tenant.id, admin.tenant.config, registration_id
    )
    return _page(
        request,
        admin.tenant,
        "admin/remove_registration.html",
        status=409 if grown else 200,
        admin=admin,
        registration=registration,
        depending=depending,
        grown=grown,
        shown_writes=_SHOWN_WRITES,
        shown_cases=_SHOWN_CASES,
    )


@router.post("/admin/registrations/{registration_id}/test", response_class=HTMLResponse)
def test_registration(
    registration_id: str,
    request: Request,
    admin: ScreenAdmin,
    settings: SettingsDep,
    database: DatabaseDep,
) -> HTMLResponse:
    report = _test_connection(
        request, admin, settings.fhir_timeout_seconds, database, registration_id
    )
    return _overview(request, admin, report={"registration": registration_id, **report})


@router.post("/admin/hooks", response_class=HTMLResponse)
async def save_hooks(request: Request, admin: ScreenAdmin) -> Response:
    form = await request.form()
    typed = {
        "enabled": [h for h in ALL_HOOKS if form.get(f"hook-{h}") == "on"],
        "adult_age": str(form.get("adult_age", "")),
        "once_per_encounter": form.get("once_per_encounter") == "on",
    }
    # a form without it (a page drawn before the field was added) keeps the link in force
    if "source_url" in form:
        typed["source_url"] = str(form["source_url"]).strip()
    hooks = {**admin.tenant.config.hooks.model_dump(mode="json"), **typed}
    # refused, the form shows what was typed (a box unticked too), not the stored hooks
    return await _screen_change(
        request, admin, lambda c: _replace(c, hooks=hooks), {"hooks": hooks}, _in_hooks_form
    )


@router.post("/admin/partners", response_class=HTMLResponse)
async def upload_partners(request: Request, admin: ScreenAdmin) -> Response:
    form = await request.form()
    upload = form.get("file")  # Starlette's UploadFile (FastAPI's is a subclass of it)
    if not isinstance(upload, UploadFile) or not upload.filename:
        no_file = Problem("choose a file", reasons=(Reason("admin.partners.no-file"),))
        return _overview(
            request, admin, status=400, problems=(no_file,), field_of=_in_partners_file
        )
    body = await upload.read()
    content_type = "text/csv" if upload.filename.lower().endswith(".csv") else "application/json"
    return await _screen_change(
        request,
        admin,
        lambda c: _imported_partners(c, content_type, body),
        field_of=_in_partners_file,
    )


#: The plan form's fields: ``<step>.<title|help>.<language>``, as the page names them.
_PLAN_FIELDS = tuple(
    f"{step.value}.{part}.{language}"
    for step in Step
    for part in ("title", "help")
    for language in ("nl", "fr", "en")
)


@router.post("/admin/plan", response_class=HTMLResponse)
async def save_plan(request: Request, admin: ScreenAdmin) -> Response:
    form = await request.form()
    if not any(field in form for field in _PLAN_FIELDS):
        # not the plan's form (a JSON body, a form cut short): read as one, its empty fields
        # put every step's wording back to the default (found by the bad-input sweep)
        raise PageError(400, "form_unreadable", language=_language(request))
    typed = {field: str(form.get(field, "")) for field in _PLAN_FIELDS}
    steps: dict[str, Any] = {}
    for step in (s.value for s in Step):
        texts: dict[str, dict[str, str]] = {"title": {}, "help": {}}
        for part in texts:
            for language in ("nl", "fr", "en"):
                value = typed[f"{step}.{part}.{language}"].strip()
                if value:
                    texts[part][language] = value
        if texts["title"] or texts["help"]:
            steps[step] = texts
    current = admin.tenant.config.plan.model_dump(mode="json")
    plan = {**current, "steps": steps}
    # refused, the form shows what was typed (a text emptied too), not the stored plan
    return await _screen_change(
        request, admin, lambda c: _replace(c, plan=plan), {"plan": typed}, _in_plan_form
    )


@router.post("/admin/config", response_class=HTMLResponse)
async def import_config(request: Request, admin: ScreenAdmin) -> Response:
    form = await request.form()
    text = str(form.get("yaml", ""))
    return await _screen_change(
        request, admin, lambda _current: read_yaml(text), {"yaml": text}, _in_yaml
    )
