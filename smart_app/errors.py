"""Error pages of the app: a short, translated explanation and what to do next.

Raise ``PageError`` anywhere under a request; the handler that ``smart_app.install``
registers renders it with the app's security headers. Technical detail about the request
(never a token or secret) is shown under the message for the EHR administrator; the
state of the service (how busy a hospital is) goes to the log only, as ``logged``: the
pages before sign-in answer anyone.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from service.api.deps import tenant_slug, tenants_of
from service.db.base import passing_failure
from service.fhir import terminology
from service.i18n import Language, negotiate, translate
from service.observability import LINE_KEYS
from service.tenant_config import PRIVATE_JWK_MEMBERS
from smart_app.assets import ICON, asset_url
from smart_app.security import ANY_FRAME, page_headers

log = logging.getLogger(__name__)

#: The keys of a refusal's log line that ``logged`` may not name: the line's own and those
#: :func:`handle_page_error` writes (a field named ``status`` would replace the refusal's).
RESERVED_LOG_KEYS = LINE_KEYS | {"status", "problem", "detail"}


class PageError(Exception):
    """A request the app refuses, shown to the user as a page (``smart.<problem>.*`` messages).

    ``logged``: fields for the refusal's log line only; their names may not be the line's
    own (:data:`RESERVED_LOG_KEYS`): a ``ValueError`` at once, where the log would have kept
    the clashing field renamed, beside the line's real ``status``.
    """

    def __init__(
        self,
        status: int,
        problem: str,
        *,
        language: Language | None = None,
        frame_origins: Sequence[str] = ANY_FRAME,
        detail: str | None = None,
        retry_after_seconds: int | None = None,
        logged: Mapping[str, object] | None = None,
        link: str | None = None,
        **values: object,
    ) -> None:
        clashing = sorted(RESERVED_LOG_KEYS.intersection(logged or {}))
        if clashing:  # a programming error: found by the first test of the refusal
            raise ValueError(f"PageError: logged may not name {', '.join(clashing)}")
        super().__init__(f"{problem}: {detail}" if detail else problem)
        self.status = status
        self.problem = problem
        # None until the user's language is known (a registration's or the session's):
        # the page then follows the browser's Accept-Language, Dutch failing that
        self.language = language
        self.frame_origins = tuple(frame_origins)
        self.detail = detail
        # a refusal that passes (a busy service): when to try again, for the browser and
        # for an EHR or proxy that retries (RFC 9110 Retry-After)
        self.retry_after_seconds = retry_after_seconds
        self.logged = dict(logged or {})
        # where the user goes on (the admin's sign-in page), named by ``smart.<problem>.link``
        self.link = link
        self.values = values


@dataclass(frozen=True)
class Said:
    """A value of a refusal's message that is a message itself (the role a page is for),
    said in the language the refusal is given in: the page's, or the JSON API's English."""

    message_id: str


def _message(error: PageError, language: Language, part: str) -> str:
    values = {
        name: translate(language, value.message_id) if isinstance(value, Said) else value
        for name, value in error.values.items()
    }
    return translate(language, f"smart.{error.problem}.{part}", **values)


#: The free text of the app's forms (their text areas and text fields, ``smart_app/templates``):
#: what a user loses when her session ended before she sent the form (:func:`typed_back`).
#: Never a password field: the admin's client secret is not shown back.
FREE_TEXT = re.compile(
    r"note|reasons|support_note|patient_explanation|team_members|not_informed_reason"
    r"|follow_up_actions|reason_text|contact_person|key_person_other"
    r"|(?:child_say|factor_text|action_text)_[\w.-]+"
    r"|yaml|name|fhir_base_url|client_id|scopes|cds_issuers|frame_origins|source_url"
    r"|step-\d\.(?:title|help)\.(?:nl|fr|en)"
    r"|child-\d+-(?:name|birth_date)|expected_date|who_helps"
)

#: The fields whose kept text says which field it was: the nurse's (each is typed in a
#: hurry, and "your text 3" does not tell a child's name from its birth date) and the
#: social worker's steps and closing; others are numbered.
_KEPT_LABELS = {
    "expected_date": "app.step1.expected-date",
    "reasons": "app.step2.reasons",
    "who_helps": "app.step2.who-helps",
    "support_note": "app.step3.note",
    "note": "casefile.note",
    "patient_explanation": "casefile.s4.explanation",
    "team_members": "casefile.s4.team",
    "not_informed_reason": "casefile.s6.not-informed-reason",
    "follow_up_actions": "casefile.s6.follow-up",
    "reason_text": "casefile.close.text",
}
#: The admin screen's (``admin/index.html``), by the labels they have there.
_ADMIN_LABELS = {
    "yaml": "admin.config.import",
    **{
        key: f"admin.registration.{key}"
        for key in ("name", "fhir_base_url", "client_id", "scopes", "cds_issuers", "frame_origins")
    },
    "source_url": "admin.hooks.source_url",
}
_PLAN_FIELD = re.compile(r"(step-\d)\.(title|help)\.(nl|fr|en)")
_CHILD_FIELD = re.compile(r"child-(\d+)-(name|birth_date)")
_CHILD_LABELS = {"name": "app.step1.child-name", "birth_date": "app.step1.birth-date"}

#: The refusals of a form's post that show its free text back: the section's title, and
#: what to do with the text.
SHOWS_TYPED_BACK = {
    "session_missing": ("smart.kept.title", "smart.kept.message"),
    "admin_session_missing": ("smart.kept.title", "smart.kept.admin-message"),
    "admin_csrf_failed": ("smart.kept.title", "smart.kept.admin-message"),
    "database_unsaved": ("smart.kept.unsure-title", "smart.kept.unsure-message"),
    "internal_error": ("smart.kept.unsure-title", "smart.kept.unsure-message"),
}
#: When a user may try again after the database did not answer (a restart, a fail-over).
DATABASE_RETRY_SECONDS = 30


async def typed_back(request: Request) -> list[tuple[str, str]]:
    """The free text of a form sent after its session ended, to show the user back: it
    cannot be saved, and a social worker's notes typed over an afternoon were lost.

    Only for a form of the app's own pages, as the browser says (``Sec-Fetch-Site``):
    another site's form could otherwise have this page show its text as the user's own.
    """
    if request.method != "POST" or request.headers.get("sec-fetch-site") != "same-origin":
        return []
    try:
        form = await request.form()
    except (HTTPException, ClientDisconnect):  # not a form, too many fields: nothing kept
        return []
    return free_text(form.multi_items())


def free_text(fields: Iterable[tuple[str, object]]) -> list[tuple[str, str]]:
    """The free text among a form's fields (:data:`FREE_TEXT`), in their order, blank ones
    left out: what a user would lose with a form that cannot be shown again."""
    return [
        (name, value.strip())
        for name, value in fields
        if isinstance(value, str) and FREE_TEXT.fullmatch(name) and value.strip()
    ]


#: The keys whose value is a secret: a registration's client secret and the private members
#: of a JWK (``service.tenant_config.PRIVATE_JWK_MEMBERS``) — what a configuration text
#: pasted in the admin screen may carry.
_SECRET_KEYS = r"client_secret|" + "|".join(sorted(PRIVATE_JWK_MEMBERS, key=len, reverse=True))
#: Such a key starting a line of block YAML (``  client_secret: …``, ``- d: …``), its value
#: on that line or, left empty or a block scalar (``|``, ``>``), on the lines indented under it.
_SECRET_LINE = re.compile(
    rf"""(?P<key>(?P<indent>[ \t]*(?:-[ \t]+)*)(?P<q>["']?)(?:{_SECRET_KEYS})(?P=q)[ \t]*:)"""
    r"(?P<value>.*)"
)
#: Such a key inside a line: flow YAML or JSON (``{"d": "…", …}``); the value quoted, or
#: plain up to the next ``,``, ``}`` or ``]`` (a flow scalar holds none of them).
_SECRET_FLOW = re.compile(
    rf"""(?P<key>(?<![\w-])(?P<q>["']?)(?:{_SECRET_KEYS})(?P=q)[ \t]*:[ \t]*)"""
    r"""(?P<value>"(?:[^"\\\n]|\\.)*"|'(?:[^'\n]|'')*'|[^\s,}\]][^,}\]\n]*)"""
)


_NULL = ("", "null", "~")


def _may_go_on(value: re.Match[str]) -> bool:
    """Whether a secret's value, starting a line of block YAML, may go on over the lines
    below: it ends the line and is no closed quoted string."""
    text = value.group("value")
    closed = len(text) > 1 and text[0] in "\"'" and text[-1] == text[0]
    return not closed and not value.string[value.end("value") :].strip()


def without_secrets(text: str) -> tuple[str, bool]:
    """A configuration text with each secret's value (:data:`_SECRET_KEYS`) made ``null``,
    and whether one was: the page after an ended admin session shows the text back, and a
    secret is never drawn on a page again. ``null`` rather than a mark: the text, imported
    as it is, keeps the stored client secret or is refused for a private key, as an export."""
    lines = text.splitlines()
    kept: list[str] = []
    removed = False
    under: int | None = None  # the indentation of a key whose value is on the lines below
    for line in lines:
        if under is not None:
            if not line.strip():  # nothing to hide; a block scalar may hold blank lines
                kept.append(line)
                continue
            if len(line) - len(line.lstrip()) > under:
                removed = True
                continue
            under = None
        if block := _SECRET_LINE.fullmatch(line):
            indent = len(block.group("indent").replace("-", " "))
            value = _SECRET_FLOW.match(line, len(block.group("indent")))
            if value is None or _may_go_on(value):
                # the lines indented under it can only be more of its value: a block scalar,
                # a plain or quoted scalar folded over lines (found by review)
                under = indent
            if value is None:  # on the lines below, or not a value the flow form reads
                removed = removed or block.group("value").split("#")[0].strip() not in _NULL
                kept.append(f"{block.group('key')} null")
                continue
        # only the value: what follows it on the line (``,``, ``}``, another key) is hers
        flow = _SECRET_FLOW.sub(lambda m: f"{m.group('key')}null", line)
        removed = removed or flow != line
        kept.append(flow)
    return "\n".join(kept), removed


def _kept_label(field: str, n: int, language: Language) -> str:
    """What the kept text was: "Kind 2: Geboortedatum", "Redenen"; else "Uw tekst 3"."""
    if child := _CHILD_FIELD.fullmatch(field):
        row, part = child.groups()
        legend = translate(language, "app.step1.child-legend")
        return f"{legend} {int(row) + 1}: {translate(language, _CHILD_LABELS[part])}"
    if field in _KEPT_LABELS:
        return translate(language, _KEPT_LABELS[field])
    if field in _ADMIN_LABELS:
        return translate(language, _ADMIN_LABELS[field])
    return plan_field_label(language, field) or translate(language, "smart.kept.label", n=n)


def plan_field_label(language: Language, field: str) -> str | None:
    """The label of the admin's plan form field ``field`` (``step-4.help.fr``): "Stap 4 —
    Hulptekst (fr)"; None for another field."""
    plan = _PLAN_FIELD.fullmatch(field)
    if plan is None:
        return None
    step, part, text_language = plan.groups()
    label = translate(language, "admin.plan." + ("title" if part == "title" else "help_text"))
    legend = terminology.display("kindreflex-step", step, language)
    return f"{legend} — {label} ({text_language})"


def shown_back(
    texts: Sequence[tuple[str, str]], language: Language, title: str, message: str
) -> str:
    """The section that shows the user's unsaved text back (HTML, escaped), under the
    messages ``title`` and ``message``, each text in a read-only text area labelled with the
    field it was typed in; nothing without text."""
    if not texts:
        return ""
    # a configuration text never draws a secret it carries (a client secret, a private key)
    cleaned = [(f, without_secrets(t) if f == "yaml" else (t, False)) for f, t in texts]
    texts = [(field, text) for field, (text, _) in cleaned]
    secrets = (
        f"<p>{html.escape(translate(language, 'smart.kept.secrets-left-out'))}</p>"
        if any(removed for _, (_, removed) in cleaned)
        else ""
    )
    fields = "".join(
        f'<p><label for="kept-{n}">{html.escape(_kept_label(field, n, language))}'
        f'</label><br><textarea id="kept-{n}" rows="4" cols="60" readonly>{html.escape(text)}'
        "</textarea></p>"
        for n, (field, text) in enumerate(texts, start=1)
    )
    return (
        f"<h2>{html.escape(translate(language, title))}</h2>"
        f"<p>{html.escape(translate(language, message))}</p>{secrets}{fields}"
    )


def render(
    error: PageError, language: Language, kept: Sequence[tuple[str, str]] = ()
) -> HTMLResponse:
    def text(part: str) -> str:
        return html.escape(_message(error, language, part))

    detail = (
        f'<p class="detail">{html.escape(translate(language, "smart.detail"))} '
        f"<code>{html.escape(error.detail)}</code></p>"
        if error.detail
        else ""
    )
    link = f'<p><a href="{html.escape(error.link)}">{text("link")}</a></p>' if error.link else ""
    product = html.escape(translate(language, "product.name"))
    # the screens' own look (base.html), from the root: the page may answer any address
    stylesheet = html.escape(asset_url("/app/static", "nurse.css"))
    icon = html.escape(asset_url("/app/static", ICON))
    body = (
        f'<!doctype html><html lang="{language}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{text('title')} · {product}</title>"
        f'<link rel="stylesheet" href="{stylesheet}">'
        f'<link rel="icon" type="image/svg+xml" href="{icon}"></head><body>'
        f'<header class="banner"><p class="product">{product}</p></header><main id="main">'
        f'<h1>{text("title")}</h1><p role="alert">{text("message")}</p>{link}{detail}'
        f"{shown_back(kept, language, *SHOWS_TYPED_BACK[error.problem]) if kept else ''}"
        "</main></body></html>"
    )
    headers = page_headers(error.frame_origins)
    if error.retry_after_seconds is not None:
        headers["Retry-After"] = str(error.retry_after_seconds)
    return HTMLResponse(body, status_code=error.status, headers=headers)


def log_refusal(status: int, problem: str, detail: str | None = None, **logged: object) -> None:
    """The log line of a refused request (``app request refused``): every PageError's, and
    that of a refusal answered with its own page (the admin's sign-in refused for CSRF)."""
    fields = {"status": status, "problem": problem, "detail": detail, **logged}
    log.info("app request refused", extra={"fields": fields})


async def handle_page_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, PageError)
    log_refusal(error.status, error.problem, error.detail, **error.logged)
    if JSON_API.fullmatch(request.url.path):
        return render_json(error)
    kept = await typed_back(request) if error.problem in SHOWS_TYPED_BACK else []
    language = error.language or negotiate([request.headers.get("accept-language")])
    return render(error, language, kept)


async def handle_database_error(request: Request, error: Exception) -> Response:
    """A database error no code before handled: a page in the browser's language (the
    session's is in the database), with what the user typed shown back, or the JSON API's
    error; it was a bare English "Internal Server Error" and the nurse's input was gone
    (found by review). A database that does not answer now (:func:`passing_failure`) is a
    503: try again; a form sent may not be saved (the failure may come after its commit),
    and the same form sent again is one save. Any other is a 500, logged whole."""
    fields = {"path": request.url.path, "error": type(error).__name__}
    frames = _last_frame_origins(request)
    if not passing_failure(error):
        log.error("database error", exc_info=error, extra={"fields": fields})
        return await handle_page_error(
            request, PageError(500, "internal_error", frame_origins=frames)
        )
    log.error("the database does not take requests now", extra={"fields": fields})
    sent = request.method not in ("GET", "HEAD")
    problem = "database_unsaved" if sent else "database_unavailable"
    retry = DATABASE_RETRY_SECONDS
    error_page = PageError(503, problem, frame_origins=frames, retry_after_seconds=retry)
    return await handle_page_error(request, error_page)


def _last_frame_origins(request: Request) -> Sequence[str]:
    """Who may frame a page after a database error: the hospital's EHRs, as this instance
    last read its configuration (the session, which names the user's EHR, is in the failed
    database). The page shows back what the user typed (children's names, notes): it was
    sent with ``frame-ancestors *``, so that any site could frame it (found by a route
    sweep). :data:`ANY_FRAME` only when this instance never read the hospital (a restart
    onto a database that is down): a nurse inside the EHR's frame must still see her text,
    and a page that refuses framing would hide it from her."""
    from smart_app.session import all_frame_origins  # it imports us

    tenant = tenants_of(request).last_read(tenant_slug(request))
    return all_frame_origins(tenant) if tenant is not None else ANY_FRAME


#: Paths whose clients read JSON errors (``{"detail": ...}``): the social and admin APIs.
JSON_API = re.compile(r"(?:/t/[^/]+)?(?:/api|/admin/api)(?:/.*)?")


def render_json(error: PageError) -> JSONResponse:
    """A refusal of the JSON API (no session, another role, no CSRF token…) as the API's
    own errors are: ``{"detail": <English text>}``; it was the app's HTML page."""
    message = _message(error, "en", "message")
    headers = {"Retry-After": str(error.retry_after_seconds)} if error.retry_after_seconds else {}
    return JSONResponse({"detail": message}, status_code=error.status, headers=headers)


async def handle_invalid_page_request(request: Request, problems: Sequence[Any]) -> Response | None:
    """A screen's request with a query or path value it cannot read (``older_than_days=abc``,
    ``/social/cases/abc``): the app's error page, 404 for an address that names nothing, 400
    for the rest, where FastAPI answered a raw English JSON 422. A screen's is a page's
    route, or a browser's request outside the JSON APIs: a case's form posted to an address
    whose case id is no number (``/social/cases/abc/close``) got the JSON 422 (found by the
    bad-input sweep). None for the JSON API's requests, which keep their 422."""
    route = request.scope.get("route")
    response_class = getattr(route, "response_class", None)
    a_page = isinstance(response_class, type) and issubclass(response_class, HTMLResponse)
    browsing = "text/html" in request.headers.get("accept", "")
    if not (a_page or (browsing and not JSON_API.fullmatch(request.url.path))):
        return None
    in_path = any(next(iter(problem.get("loc") or ("",))) == "path" for problem in problems)
    from smart_app.session import LAUNCH_PARAM, current_launch, frame_origins  # imports us

    try:  # the signed-in user's language and frames, else the browser's
        ctx = current_launch(request)
        frames, language = frame_origins(ctx), ctx.language
    except PageError:
        frames, language = ANY_FRAME, None
    if in_path:
        error = PageError(404, "page_not_found", language=language, frame_origins=frames)
    else:  # the way on: the same page without what it could not read (found by review)
        launch = request.query_params.get(LAUNCH_PARAM)  # the launch the page is pinned to
        page = request.url.path + (f"?{urlencode({LAUNCH_PARAM: launch})}" if launch else "")
        error = PageError(400, "bad_query", language=language, frame_origins=frames, link=page)
    return await handle_page_error(request, error)
