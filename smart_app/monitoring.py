"""The monitoring figures (issue 5 §6): a screen, a CSV download and a FHIR MeasureReport.

* ``GET /monitoring?from=YYYY-MM-DD&to=YYYY-MM-DD`` — the screen (Dutch first);
* ``GET /monitoring.csv?…`` — the same figures as a UTF-8 CSV with a header row;
* ``GET /monitoring/MeasureReport?…`` — a FHIR R4 summary ``MeasureReport``.

Mounted plain and under ``/t/{tenant}``. Social workers and admins only: launched from
the EHR, or an admin of the same hospital signed in with a bootstrap token (the admin
cookie, ``admin.admin_cookie``, or ``Authorization: Bearer``, as on the admin pages).
Anonymous 401, anyone else 403; every view and download is audited locally. The figures are counts
(``service.monitoring``): no output names or identifies a patient.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date
from functools import partial
from typing import Annotated, Literal

from babel.numbers import format_decimal
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from service import audit, monitoring
from service.api.deps import DatabaseDep, TenantDep
from service.audit import AuditAction, AuditFact
from service.db.base import utcnow
from service.fhir import terminology
from service.i18n import Language, negotiate, translate
from service.local_time import local_today
from service.monitoring import Breakdown, Figure, Figures, Period, PeriodError
from service.tenancy import TenantContext
from service.tenant_config import OVERRIDE_REASONS
from smart_app import admin, dates
from smart_app.errors import PageError, Said
from smart_app.pages import TEMPLATES
from smart_app.security import page_headers
from smart_app.session import all_frame_origins, current_launch, frame_origins, security_headers

router = APIRouter(tags=["monitoring"])

#: Who may see the figures: the social service and the hospital's admins.
ALLOWED_ROLES = frozenset({"social-worker", "admin"})
Format = Literal["screen", "csv", "measure-report"]


@dataclass(frozen=True)
class Viewer:
    """Who looks at the figures, whichever way they signed in."""

    tenant: TenantContext
    actor: str  # the audit row's actor
    fhir_base_url: str | None  # the audit row's: the EHR launched from (None: an admin's sign-in)
    language: Language
    prefix: str  # "" or "/t/{tenant}", for the screen's links
    headers: dict[str, str]  # the page's security headers (frame-ancestors of the EHRs)
    #: The screen the banner's link goes back to: the admin screen for an admin, else the
    #: social service's worklist
    back: Literal["admin", "worklist"] = "admin"


async def require_viewer(request: Request, tenant: TenantDep) -> Viewer:
    """A social worker's or admin's EHR launch, or a signed-in admin of this hospital.

    An admin token (cookie or Bearer) is judged by the admin pages' own dependency: an
    unknown or expired one is 401, another hospital's 403 — never a fall back to a launch.
    """
    if admin.admin_cookie(request) in request.cookies or _has_bearer(request):
        signed_in = await admin.api_admin(request, tenant)
        language = negotiate(
            [request.query_params.get("lang"), request.headers.get("accept-language")]
        )
        slug = request.path_params.get("tenant")
        headers = page_headers(all_frame_origins(tenant))
        prefix = f"/t/{slug}" if slug else ""
        return Viewer(tenant, signed_in.actor, None, language, prefix, headers, "admin")
    ctx = current_launch(request)
    if not ALLOWED_ROLES & ctx.user.roles:
        raise PageError(
            403,
            "forbidden_role",
            language=ctx.language,
            frame_origins=frame_origins(ctx),
            role=Said("monitoring.roles"),
        )
    return Viewer(
        ctx.tenant,
        ctx.actor,
        ctx.fhir_base_url,
        ctx.language,
        ctx.path_prefix,
        security_headers(ctx),
        "worklist" if "social-worker" in ctx.user.roles else "admin",
    )


def _has_bearer(request: Request) -> bool:
    return request.headers.get("authorization", "").lower().startswith("bearer ")


Monitor = Annotated[Viewer, Depends(require_viewer)]
#: Dates are checked by ``_date``, so that a bad one gets the screen's own message.
DateParam = Annotated[str | None, Query()]


@router.get("/monitoring", response_class=HTMLResponse, summary="The monitoring figures")
def screen(
    ctx: Monitor,
    database: DatabaseDep,
    first: Annotated[DateParam, Query(alias="from")] = None,
    last: Annotated[DateParam, Query(alias="to")] = None,
) -> HTMLResponse:
    try:
        period = _period(first, last)
    except PeriodError as error:
        problem = translate(ctx.language, f"monitoring.period.{error.code}", **error.values)
        return _page(ctx, None, first, last, problem=problem, status=400)
    return _page(ctx, _figures(ctx, database, period, "screen"), first, last)


@router.get("/monitoring.csv", summary="The monitoring figures as CSV")
def download_csv(
    ctx: Monitor,
    database: DatabaseDep,
    first: Annotated[DateParam, Query(alias="from")] = None,
    last: Annotated[DateParam, Query(alias="to")] = None,
) -> Response:
    try:
        period = _period(first, last)
    except PeriodError as error:
        return Response(
            str(error),
            status_code=400,
            media_type="text/plain; charset=utf-8",
            headers=ctx.headers,
        )
    result = _figures(ctx, database, period, "csv")
    name = f"kindreflex-monitoring-{ctx.tenant.slug}-{period.first}-{period.last}.csv"
    headers = ctx.headers | {"Content-Disposition": f'attachment; filename="{name}"'}
    return Response(
        _csv(result, ctx.language),
        media_type="text/csv; charset=utf-8; header=present",
        headers=headers,
    )


@router.get("/monitoring/MeasureReport", summary="The monitoring figures as a FHIR MeasureReport")
def measure_report(
    ctx: Monitor,
    database: DatabaseDep,
    first: Annotated[DateParam, Query(alias="from")] = None,
    last: Annotated[DateParam, Query(alias="to")] = None,
) -> JSONResponse:
    try:
        period = _period(first, last)
    except PeriodError as error:
        return JSONResponse(
            _outcome(str(error)),
            400,
            headers=ctx.headers,
            media_type="application/fhir+json",
        )
    result = _figures(ctx, database, period, "measure-report")
    report = monitoring.measure_report(
        result, reporter=ctx.tenant.config.name, generated_at=utcnow()
    )
    return JSONResponse(report, headers=ctx.headers, media_type="application/fhir+json")


# -- shared -------------------------------------------------------------------------------


def _period(first: str | None, last: str | None) -> Period:
    """The asked period; without one, this month up to today."""
    today = local_today()
    return Period(
        _date(first, "from") if first else today.replace(day=1),
        _date(last, "to") if last else today,
    )


def _date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        shown = value[:20]  # echoed in the message: never a whole pasted text
        raise PeriodError(
            "not-a-date", f"'{name}' is not a date (YYYY-MM-DD): {shown}", value=shown
        ) from None


def _figures(ctx: Viewer, database: DatabaseDep, period: Period, shown: Format) -> Figures:
    """The figures, and the audit row of who saw which period in which form."""
    with database.session() as session:
        result = monitoring.figures(session, ctx.tenant.id, period)
        fact = AuditFact(
            actor=ctx.actor,
            action=AuditAction.SEARCH,
            patient_ref=None,
            entities=(
                f"Measure/{monitoring.MEASURE_ID}?from={period.first}&to={period.last}"
                f"&format={shown}",
            ),
            outcome="success",
            at=utcnow(),
        )
        audit.record_local(session, ctx.tenant.id, fact, ctx.fhir_base_url)
    return result


def _outcome(reason: str) -> dict[str, object]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": reason}],
    }


def _figure_label(figure: Figure, language: Language) -> str:
    return terminology.display("monitoring-figure", figure.value, language)


def _breakdown_label(breakdown: Breakdown, key: str, language: Language) -> str:
    """The label of one line of a breakdown, in the user's language."""
    if breakdown is Breakdown.REFERRAL_TARGET:
        return terminology.display("partner-type", key, language)
    if breakdown is Breakdown.INDICATOR:
        return translate(language, f"monitoring.indicator.{key}")
    if not key:
        return translate(language, "monitoring.reason.none")
    try:
        return terminology.display(OVERRIDE_REASONS, key, language)
    except terminology.GuideError:  # a reason code of the EHR's own: shown as sent
        return key


def _csv(result: Figures, language: Language) -> str:
    """One row per figure and per line of its breakdown; a BOM so that Excel reads UTF-8."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(
        [
            "period_start",
            "period_end",
            "figure",
            "figure_label",
            "breakdown",
            "breakdown_label",
            "count",
            "median_hours",
        ]
    )
    period = (result.period.first.isoformat(), result.period.last.isoformat())
    for figure, value in result:
        label = _figure_label(figure, language)
        hours = "" if value.hours is None else f"{value.hours:.1f}"
        writer.writerow([*period, figure.value, label, "", "", value.count, hours])
        breakdown = monitoring.BREAKDOWN_OF.get(figure)
        if breakdown is None:
            continue
        for key, count in sorted(value.breakdown.items()):
            line = _breakdown_label(breakdown, key, language)
            code = _cell(key or "none")  # an override reason code is the EHR's text
            writer.writerow([*period, figure.value, label, code, _cell(line), count, ""])
    return "\ufeff" + out.getvalue()


def _cell(text: str) -> str:
    """Text a spreadsheet would run as a formula (``=``, ``+``, ``-``, ``@``) made inert."""
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def _page(
    ctx: Viewer,
    result: Figures | None,
    first: str | None,
    last: str | None,
    *,
    problem: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    language = ctx.language
    html = TEMPLATES.get_template("monitoring/index.html").render(
        t=partial(_message, language),
        lang=language,
        product_name=translate(language, "product.name"),
        prefix=ctx.prefix,
        back=ctx.back,
        first=result.period.first.isoformat() if result else first or "",
        last=result.period.last.isoformat() if result else last or "",
        result=result,
        problem=problem,
        figure_label=partial(_figure_label, language=language),
        breakdown_of=monitoring.BREAKDOWN_OF,
        breakdown_label=partial(_breakdown_label, language=language),
        hours=partial(_hours, language=language),
        shown_date=dates.shown_date,
    )
    return HTMLResponse(html, status_code=status, headers=ctx.headers)


def _hours(hours: float, language: Language) -> str:
    """A median in hours as the page's language writes a decimal: 2,5 in Dutch and French
    (the CSV and the MeasureReport keep 2.5, for machines)."""
    return format_decimal(
        hours, format="0.0", locale="en" if language == "en" else f"{language}_BE"
    )


def _message(language: Language, message_id: str, **values: object) -> str:
    return translate(language, f"monitoring.{message_id}", **values)
