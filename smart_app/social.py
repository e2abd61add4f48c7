"""The social service's API and screen (issue 5): its cases, and claiming or assigning one.

* JSON: ``GET /api/cases``, ``POST /api/cases/{id}/claim``, ``PUT /api/cases/{id}/assignment``,
  the steps ``POST /api/cases/{id}/step-4|step-5|step-6``, ``POST /api/cases/{id}/close``
  (with its reason) and ``PUT /api/cases/{id}/referral`` (the referral's status);
* HTML: ``GET /social`` (the worklist screen) and ``POST /social/cases/{id}/claim``.

Mounted plain and under ``/t/{tenant}``. Every endpoint requires the social-worker role
(anonymous 401, anyone else 403, both with a clear message); changes also need the
session's CSRF token (header ``X-CSRF-Token`` or form field ``csrf_token``). Every
listing and every change is audited locally: who, when, what, which patients (a listing
as one row per patient listed, in that patient's trail); a refused change is audited as
a failure, also one refused for its role or its CSRF token (``verify_case_csrf``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from functools import partial
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from service import audit, social
from service.api.deps import DatabaseDep
from service.audit import AuditAction, AuditFact, Outcome, actor_url
from service.casework import (
    CaseFile,
    CaseNotOnServerError,
    Casework,
    CloseRefusedError,
    NoReferralError,
    Reopening,
    SaveOnItsWayError,
    StepResult,
    UnknownEncounterError,
    UnknownReferralError,
)
from service.db.base import utcnow
from service.fhir import mapping, terminology
from service.fhir.client import (
    FhirError,
    FhirRejected,
    FhirUnavailable,
    FhirUnreadable,
    ReauthorisationRequired,
    identifier_search,
)
from service.fhir.mapping import UnreadableResourceError
from service.fhir.terminology import identifier_system
from service.i18n import Language, translate
from service.local_time import local, local_today
from service.protocol import CaseClosure, CloseReason, Finding, ProtocolError, ReferralStatus
from service.social import (
    CaseFilter,
    CasePage,
    CaseSort,
    CaseStatus,
    CaseView,
    Step4Input,
    Step5Input,
    Step6Input,
)
from service.text import OneLine, OptionalText, user_display
from smart_app.errors import PageError
from smart_app.pages import TEMPLATES
from smart_app.session import (
    LAUNCH_PARAM,
    LaunchContext,
    LaunchDep,
    csrf_token,
    pinned,
    require_role,
    security_headers,
    verify_csrf,
)

router = APIRouter(tags=["social service"])
_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])

_as_social_worker = require_role("social-worker")


def _social_worker(request: Request, ctx: LaunchDep, database: DatabaseDep) -> LaunchContext:
    """The launch, if its user is a social worker; else a 403, audited when a case was
    asked for: an access request must show who tried to open a patient's case (found by
    review: the refusal came before any route's audit)."""
    try:
        return _as_social_worker(ctx)
    except PageError:
        _audit_case_asked(request, ctx, database)
        raise


async def verify_case_csrf(request: Request, ctx: LaunchDep, database: DatabaseDep) -> None:
    """``verify_csrf`` for a change of a case (every route of one, API and screens): a
    request refused for its token (a forged cross-site post, a stale tab) is audited as a
    role's refusal is, a failure of the case's patient on the case's server, so that the
    attempt is in that patient's trail (found by review: a 403 and nothing recorded).
    The route's dependencies run before its role check, so a nurse's post with a forged
    token is refused here, and recorded here as her role's refusal would have been.

    A request without a session never gets here (``LaunchDep`` answers 401 first) and is
    not recorded, as the role check does not record it: it names no user to attribute
    the attempt to, and it read and changed nothing. A row for each would let anyone who
    reaches the app write rows into any patient's trail by trying case ids, rows an
    access request would then have to account for, naming no one."""
    try:
        await verify_csrf(request, ctx)
    except PageError:
        await run_in_threadpool(_audit_case_asked, request, ctx, database)
        raise


def _audit_case_asked(request: Request, ctx: LaunchContext, database: DatabaseDep) -> None:
    """A request for the case the path names refused before its route ran (and audited
    anything): a failure row of the case's patient on its server (``audit_refusal``), a
    read for a GET, else an update. A path that names no case records nothing."""
    asked = _case_id(request.path_params.get("case_id", ""))
    if asked is not None:
        safe = request.method in ("GET", "HEAD")
        action = AuditAction.READ if safe else AuditAction.UPDATE
        audit_refusal(ctx, database, action, case_id=asked)


def _case_id(text: str) -> int | None:
    """A case id as the path gives it, if it can name one (ASCII digits, within the
    database's integer): "²" is a digit to ``str.isdigit``, and int() refuses it."""
    if re.fullmatch(r"[0-9]{1,10}", text) is None:
        return None
    number = int(text)
    return number if 1 <= number <= social.MAX_ID else None


SocialWorker = Annotated[LaunchContext, Depends(_social_worker)]
#: Where a social worker's launch from a patient's chart opens (``patient_case_page``).
PATIENT_CASE_PAGE = "/social/patient"
#: The nurse's triage screen (``smart_app.nurse``), where a launch during a visit opens.
TRIAGE_PAGE = "/app/triage"
#: The worklist screen, where a social worker's launch without a patient opens.
WORKLIST_PAGE = "/social"
#: Ids and versions are bounded by the database's integer (``social.MAX_ID``): a larger
#: one is a 422 here, where the query failed with a 500.
CaseId = Annotated[int, Path(ge=1, le=social.MAX_ID)]
#: The screen a claim from a page returns to (``social/_claim.html``).
ClaimReturn = Literal["worklist", "case"]
RowVersion = Annotated[
    int,
    Field(ge=1, le=social.MAX_ID, description="The case's `row_version` as you last saw it."),
]


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    row_version: RowVersion


class AssignmentRequest(ClaimRequest):
    assignee: OneLine | None = Field(
        max_length=500, description="`Practitioner/<id>` (or PractitionerRole); null: unassign."
    )


class AssignmentResponse(BaseModel):
    id: int
    assigned_to: str | None
    row_version: int


class Step4Request(Step4Input):
    row_version: RowVersion


class Step5Request(Step5Input):
    row_version: RowVersion


class Step6Request(Step6Input):
    row_version: RowVersion


class Closing(BaseModel):
    """Why a case closes (the API's body and the case page's form)."""

    model_config = ConfigDict(extra="forbid")

    reason: CloseReason = Field(
        description="safety-restored | referred | patient-left-care | other"
    )
    reason_text: OptionalText = Field(None, max_length=1000, description="Required for `other`.")


class CloseRequest(ClaimRequest, Closing):
    pass


class ReferralStatusChange(BaseModel):
    """A referral's new status (the API's body and the case page's forms, one a referral)."""

    model_config = ConfigDict(extra="forbid")

    referral_id: str | None = Field(
        None,
        pattern=rf"^{mapping.FHIR_ID.pattern}$",
        description="The referral's ServiceRequest id (`referrals[].id` of the case). "
        "Absent or null: the case's latest referral, as before a case's earlier referrals "
        "could be changed. An id that is not one of this case's referrals is refused (422).",
    )
    status: ReferralStatus = Field(description="active | on-hold | completed | revoked")
    note: OptionalText = Field(
        None,
        max_length=4000,
        description="Why, or what the facility said; required to revoke (422 "
        "`revocation-reason-required`).",
    )


class ReferralStatusRequest(ClaimRequest, ReferralStatusChange):
    pass


class ChildView(BaseModel):
    ref: str = Field(description="The child's RelatedPerson reference (use it in `focus`).")
    name: str
    birth_date: date


class AddedNoteView(BaseModel):
    text: str
    author: str | None = Field(description="Who added it: a reference or a name, as written.")
    time: str | None = Field(description="When, as written (a FHIR dateTime).")


class FindingView(BaseModel):
    step: str
    recorded_at: datetime
    recorded_by: str
    recorded_by_display: str | None = Field(
        None, description="The author's name, as the FHIR server has it; null when not known."
    )
    content: dict[str, Any] = Field(
        description="Every field of the finding, named as in the step bodies; `note` is "
        "the recorder's own."
    )
    added_notes: list[AddedNoteView] = Field(
        description="Notes others (the EHR's users) added to the finding on the FHIR server."
    )


class ReferralView(BaseModel):
    id: str = Field(description="The ServiceRequest id on the FHIR server.")
    status: str = Field(
        description="active | on-hold | completed | revoked (ours); draft | unknown: set "
        "by the EHR, not followed up"
    )
    target: str | None = Field(
        description="vk | ocj | parket | police; null: the EHR took our coding away"
    )
    performer: str | None = Field(
        description="Reference to the facility's Organization; null: the EHR's edit names "
        "none (a display only)"
    )
    authored_on: datetime
    notes: list[dict[str, Any]] = Field(description="FHIR Annotations, oldest first.")
    facility_name: str | None = Field(description="The facility's name, as on the server.")
    facility_telecom: list[dict[str, Any]] = Field(
        description="The facility's phone numbers and addresses (FHIR ContactPoints)."
    )


class CaseFileResponse(BaseModel):
    id: int
    patient: str
    status: str
    row_version: int = Field(description="Send back to change the case (optimistic locking).")
    follow_up_due: date | None
    next_steps: list[str]
    children: list[ChildView]
    findings: list[FindingView] = Field(description="Steps 1-6 as recorded, oldest first.")
    referrals: list[ReferralView] = Field(description="Newest first.")
    closure: dict[str, str | None] | None = Field(
        description="Why the case was closed: `{reason, text}`; null while open."
    )
    closed_at: datetime | None = Field(
        description="When the case was closed, as its Flag's `period.end` says; null while "
        "open. A case closed in the EHR may have it with a null `closure`."
    )
    history_complete: bool = Field(
        description="False: the FHIR server holds more findings or referrals than a case "
        "reads; `findings` and `referrals` lack some."
    )


class StepResponse(BaseModel):
    status: str = Field(description="delivered | pending (the outbox delivers it) | failed")
    outbox_id: int
    next_steps: list[str] = Field(description="What the protocol expects next.")
    row_version: int
    reopening: Reopening | None = Field(
        None,
        description="A referral's status change that left a case closed as `referred` with "
        "no referral standing (its last one revoked): `reopened`, the case is open again "
        "(its Flag active, on the worklist, step 6 open); `kept-closed`, the patient has "
        "another open case, where the children are followed, so this one stays closed. "
        "Null: the case's state did not change.",
    )


class ListingQuery(BaseModel):
    """The query parameters of the list (API and screen)."""

    model_config = ConfigDict(extra="forbid")

    status: CaseStatus = "open"
    view: CaseView = Field("all", description="all | mine | unassigned")
    older_than_days: int | None = Field(None, ge=0, le=3650)
    overdue: bool = Field(
        False,
        description="Only open cases whose step 5 follow-up date has passed; ignored with "
        "status=closed (a closed case has no follow-up due).",
    )
    sort: CaseSort = Field(
        "newest",
        description="newest | oldest (by flag time) | acute-first (acute danger first, then "
        "newest)",
    )
    limit: int = Field(50, ge=1, le=200)
    cursor: str | None = Field(None, max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _launch_is_the_sessions(cls, data: Any) -> Any:
        """The launch a call names (``LAUNCH_PARAM``, as the pages do) is the session's, not
        the list's: before, the API refused it (422) and always used the browser's newest
        launch (found by review)."""
        if isinstance(data, Mapping):
            return {name: value for name, value in data.items() if name != LAUNCH_PARAM}
        return data

    def filter(self) -> CaseFilter:
        return CaseFilter(self.status, self.view, self.older_than_days, self.sort, self.overdue)


Listing = Annotated[ListingQuery, Query()]


class WorklistQuery(ListingQuery):
    """The screen's: a social worker opening the worklist sees acute danger first;
    ``claimed``: the case she just took on herself, which the page confirms."""

    sort: CaseSort = "acute-first"
    claimed: int | None = Field(None, ge=1, le=social.MAX_ID)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        """The filter form sends a number field left empty as ``older_than_days=``: no filter
        (the API keeps refusing it)."""
        if isinstance(data, Mapping):
            return {name: value for name, value in data.items() if value != ""}
        return data


@router.get("/api/cases", summary="The hospital's Kindreflex cases, filtered, sorted, paginated")
def list_cases(ctx: SocialWorker, database: DatabaseDep, wanted: Listing) -> CasePage:
    try:
        return _listing(ctx, database, wanted)
    except social.InvalidCursorError as error:
        raise HTTPException(400, str(error)) from error


@router.post(
    "/api/cases/{case_id}/claim",
    summary="Take a case on yourself",
    dependencies=[Depends(verify_case_csrf)],
    responses={404: {}, 409: {}},
)
def claim(
    ctx: SocialWorker, database: DatabaseDep, case_id: CaseId, body: ClaimRequest
) -> AssignmentResponse:
    return _api_change(ctx, database, case_id, ctx.actor, body.row_version)


@router.put(
    "/api/cases/{case_id}/assignment",
    summary="Assign a case to a colleague, or unassign it",
    dependencies=[Depends(verify_case_csrf)],
    responses={400: {}, 404: {}, 409: {}},
)
def assign(
    ctx: SocialWorker, database: DatabaseDep, case_id: CaseId, body: AssignmentRequest
) -> AssignmentResponse:
    return _api_change(ctx, database, case_id, body.assignee, body.row_version)


def casework_of(request: Request) -> Casework:
    state = request.app.state
    return Casework(
        state.database, state.outbox, state.session_tokens, state.settings.fhir_timeout_seconds
    )


CaseworkDep = Annotated[Casework, Depends(casework_of)]
_STEP_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {},
    404: {},
    409: {},
    422: {},
    502: {},
    503: {},
}


def _case_write(
    method: str, action: str, summary: str, description: str | None = None
) -> Callable[[_Endpoint], _Endpoint]:
    """The route of a change of a case (``/api/cases/{case_id}/<action>``): CSRF-checked,
    answering the refusals of ``_refusal``."""
    return router.api_route(
        f"/api/cases/{{case_id}}/{action}",
        methods=[method],
        summary=summary,
        description=description,
        dependencies=[Depends(verify_case_csrf)],
        responses=_STEP_ERRORS,
    )


@router.get(
    "/api/cases/{case_id}",
    summary="A case with its history, as the FHIR server holds it (an audited read)",
    responses={401: {}, 404: {}, 409: {}, 502: {}, 503: {}},
)
def case_file(
    ctx: SocialWorker, work: CaseworkDep, database: DatabaseDep, case_id: CaseId
) -> CaseFileResponse:
    try:
        opened = work.open_case(ctx, case_id)
    except _REFUSALS as error:
        audit_refusal(ctx, database, AuditAction.READ, case_id=case_id)
        raise HTTPException(*_refusal(error)) from error
    return _case_file_view(opened)


def _case_file_view(opened: CaseFile) -> CaseFileResponse:
    case = opened.case
    closure = opened.closure
    return CaseFileResponse(
        id=opened.case_id,
        patient=case.patient_ref,
        status=opened.status,
        row_version=opened.row_version,
        follow_up_due=opened.follow_up_due,
        next_steps=sorted(s.value for s in case.next_steps),
        children=[
            ChildView(ref=c.ref, name=c.name, birth_date=c.birth_date) for c in case.children
        ],
        findings=[
            FindingView(
                step=f.step.value,
                recorded_at=f.recorded_at,
                recorded_by=f.recorded_by,
                recorded_by_display=opened.people.get(f.recorded_by),
                content=_FINDING_JSON.dump_python(f, mode="json"),
                added_notes=[
                    AddedNoteView(text=n.text, author=n.author, time=n.time) for n in added
                ],
            )
            for f, added in zip(case.findings, opened.added_notes, strict=True)
        ],
        referrals=[_referral_view(r, opened.facilities) for r in opened.referrals],
        closure=None if closure is None else {"reason": closure.reason.value, "text": closure.text},
        closed_at=opened.closed_at,
        history_complete=opened.history_complete,
    )


#: A protocol finding (a frozen dataclass) as JSON, fields named as in the step bodies.
_FINDING_JSON: TypeAdapter[Finding] = TypeAdapter(Finding)


def _referral_view(
    resource: dict[str, Any], facilities: Mapping[str, dict[str, Any]]
) -> ReferralView:
    performer = mapping.referral_performer(resource)
    facility = facilities.get(performer, {}) if performer else {}
    return ReferralView(
        id=resource["id"],
        status=resource["status"],
        target=mapping.referral_target(resource),
        performer=performer,
        authored_on=resource["authoredOn"],
        notes=resource.get("note", []),
        facility_name=facility.get("name"),
        facility_telecom=facility.get("telecom", []),
    )


@_case_write("POST", "step-4", "Step 4: the team decision on concern and willingness")
def step_4(
    ctx: SocialWorker, work: CaseworkDep, database: DatabaseDep, case_id: CaseId, body: Step4Request
) -> StepResponse:
    return _save(
        ctx, database, case_id, lambda: work.record_step(ctx, case_id, body.row_version, body)
    )


@_case_write("POST", "step-5", "Step 5: progress in restoring safety")
def step_5(
    ctx: SocialWorker, work: CaseworkDep, database: DatabaseDep, case_id: CaseId, body: Step5Request
) -> StepResponse:
    return _save(
        ctx, database, case_id, lambda: work.record_step(ctx, case_id, body.row_version, body)
    )


@_case_write(
    "POST",
    "step-6",
    "Step 6: the referral to the VK, the OCJ or (acute danger) the parket or police",
)
def step_6(
    ctx: SocialWorker, work: CaseworkDep, database: DatabaseDep, case_id: CaseId, body: Step6Request
) -> StepResponse:
    return _save(
        ctx, database, case_id, lambda: work.record_step(ctx, case_id, body.row_version, body)
    )


@_case_write(
    "POST", "close", "Close the case: the Flag becomes inactive; its history stays readable"
)
def close(
    ctx: SocialWorker, work: CaseworkDep, database: DatabaseDep, case_id: CaseId, body: CloseRequest
) -> StepResponse:
    return _save(
        ctx,
        database,
        case_id,
        lambda: work.close_case(
            ctx, case_id, body.row_version, CaseClosure(body.reason, body.reason_text)
        ),
    )


@_case_write(
    "PUT",
    "referral",
    "The status of one of the case's referrals, as it proceeds (also closed)",
    "Changes the referral `referral_id` names, one of the case's `referrals` (an earlier "
    "one, e.g. the VK's, goes on after a later step 6 to the police). Without `referral_id` "
    "the case's latest referral changes, as this endpoint did before it took an id. An id "
    "that is not one of this case's referrals is refused with 422, nothing written. The "
    "referral is updated with If-Match on the version read; a referral changed on the FHIR "
    "server meanwhile, or a stale `row_version`, is a 409. Revoking the last referral "
    "standing of a case closed as `referred` reopens it (`reopening` in the answer).",
)
def referral_status(
    ctx: SocialWorker,
    work: CaseworkDep,
    database: DatabaseDep,
    case_id: CaseId,
    body: ReferralStatusRequest,
) -> StepResponse:
    return _save(
        ctx,
        database,
        case_id,
        lambda: work.update_referral(
            ctx, case_id, body.row_version, body.referral_id, body.status, body.note
        ),
    )


def _save(
    ctx: LaunchContext, database: DatabaseDep, case_id: int, save: Callable[[], StepResult]
) -> StepResponse:
    """Run a save; every refusal becomes a 4xx (or 503) with its reason, and is audited."""
    try:
        result = save()
    except _REFUSALS as error:
        audit_refusal(ctx, database, case_id=case_id)
        raise HTTPException(*_refusal(error)) from error
    return StepResponse(
        status=result.status,
        outbox_id=result.outbox_id,
        next_steps=list(result.next_steps),
        row_version=result.row_version,
        reopening=result.reopening,
    )


_REFUSALS = (
    ProtocolError,
    social.CatalogueError,
    social.CaseNotFoundError,
    social.CaseConflict,
    CaseNotOnServerError,
    CloseRefusedError,
    NoReferralError,
    UnknownReferralError,
    UnknownEncounterError,
    SaveOnItsWayError,
    FhirError,
    ReauthorisationRequired,
)


def _refusal(error: Exception) -> tuple[int, object]:
    """The HTTP status and detail of a refused save (never a 500)."""
    match error:
        case ProtocolError():
            return 422, {"code": error.code.value, "message": error.message}
        case social.CatalogueError() | UnknownReferralError() | UnknownEncounterError():
            return 422, {"message": str(error)}
        case social.CaseNotFoundError():
            return 404, str(error)
        case social.CaseConflict():
            return 409, {"message": error.message, "row_version": error.current_version}
        case CaseNotOnServerError() | CloseRefusedError() | NoReferralError() | SaveOnItsWayError():
            return 409, {"message": str(error)}
        case ReauthorisationRequired():
            return 401, "The EHR session ended; open the app from the EHR again."
        case FhirError() if token_refused(error):
            return 401, "The FHIR server refused the EHR session; open the app from the EHR again."
        case UnreadableResourceError():  # a resource of ours the EHR changed: which one
            return 502, (
                f"The FHIR server holds {error.resource} in a form Kindreflex cannot read "
                f"({error.problem}); nothing was saved. Tell the EHR's administrators."
            )
        case FhirUnreadable():
            return 502, "The FHIR server's answer is not FHIR; nothing was saved."
        case FhirUnavailable():
            return 503, "The FHIR server does not answer; nothing was saved. Try again shortly."
        case _:
            return 502, f"The FHIR server refused the request: {error}"


def token_refused(error: FhirError) -> bool:
    """The FHIR server refused the launch's access token (401/403), not the request: the
    user must open the app from the EHR again, which the page and the API say instead of
    "refused" (the API answered 502, a broken server, found by review)."""
    return isinstance(error, FhirRejected) and error.needs_authorisation


def audit_refusal(
    ctx: LaunchContext,
    database: DatabaseDep,
    action: AuditAction = AuditAction.UPDATE,
    patient_ref: str | None = None,
    fhir_base_url: str | None = None,
    *,
    case_id: int | None = None,
) -> None:
    """A refused change or read, audited as a failure; ``patient_ref``: the patient whose
    data the user was shown all the same, on the FHIR server ``fhir_base_url`` (None: the
    session's; a case recorded through another EHR has its patient on that EHR's).
    ``case_id``: the case asked for, whose patient (on its server) is then named, so that
    the refusal is in that patient's trail; a case of no one of this hospital names none."""
    with database.session() as session:
        if case_id is not None and patient_ref is None:
            asked = social.case_summary(session, ctx.tenant.id, case_id, today=local_today())
            if asked is not None:
                patient_ref, fhir_base_url = asked.patient, asked.fhir_server
        refused = _fact(ctx, action, patient_ref, (), outcome="failure")
        server = fhir_base_url or ctx.fhir_base_url
        audit.record_local(session, ctx.tenant.id, refused, server)


# -- the worklist screen ----------------------------------------------------------------------


@router.get(WORKLIST_PAGE, response_class=HTMLResponse, summary="The social service's worklist")
def worklist_page(
    ctx: SocialWorker, database: DatabaseDep, wanted: Annotated[WorklistQuery, Query()]
) -> HTMLResponse:
    try:
        return _worklist_page(ctx, database, wanted)
    except social.InvalidCursorError:  # an old or altered "next page" link: its first page
        first = wanted.model_copy(update={"cursor": None})
        return _worklist_page(ctx, database, first, problem=("bad-cursor", None), status=400)


@router.get(
    PATIENT_CASE_PAGE, response_class=HTMLResponse, summary="The case of the launch's patient"
)
def patient_case_page(ctx: SocialWorker, database: DatabaseDep) -> Response:
    """Where a social worker's launch from a patient's chart opens: that patient's case;
    without one, the worklist saying so (the triage screen would only say it needs a
    visit, though the user came for the case). During a visit (an encounter), the open
    case, else the triage: the visit's encounter sent her to the triage even for a
    patient with an open case, who then had two ways in and the case none (found by
    review); with no open case, a social worker in the ED does the Kindreflex as anyone."""
    case_id = None
    visit = ctx.encounter_id is not None
    if ctx.patient_id is not None:
        with database.session() as session:
            patient = f"Patient/{ctx.patient_id}"
            case_id = social.patient_case(
                session, ctx.tenant.id, ctx.fhir_base_url, patient, open_only=visit
            )
    if case_id is None and visit:
        return RedirectResponse(pinned(ctx, TRIAGE_PAGE), status_code=303)
    if case_id is None:
        return _worklist_page(ctx, database, WorklistQuery(), notice="no-case-for-patient")
    return RedirectResponse(pinned(ctx, f"/social/cases/{case_id}"), status_code=303)


@router.post(
    "/social/cases/{case_id}/claim",
    dependencies=[Depends(verify_case_csrf)],
    response_class=HTMLResponse,
    summary="Take a case on yourself (the screen's button)",
)
def claim_from_page(
    ctx: SocialWorker,
    database: DatabaseDep,
    case_id: CaseId,
    row_version: Annotated[int, Form(ge=1, le=social.MAX_ID)],
    work: CaseworkDep,
    return_to: Annotated[ClaimReturn, Form()] = "worklist",
) -> Response:
    try:
        _change(ctx, database, case_id, ctx.actor, row_version)
    except social.CaseNotFoundError:
        return _worklist_page(
            ctx, database, WorklistQuery(), problem=("not-found", None), status=404
        )
    except social.InvalidAssigneeError as refusal:
        # SMART allows a fhirUser that is a Person or RelatedPerson: no one a case goes to.
        return _claim_refused(ctx, database, work, case_id, return_to, refusal)
    except social.CaseConflict as conflict:
        # Already yours (the button pressed twice, or in another tab): what was asked is done.
        if conflict.reason != "changed" or conflict.holder != ctx.actor:
            return _claim_refused(ctx, database, work, case_id, return_to, conflict)
    # Post/redirect/get: a reload does not claim again.
    return RedirectResponse(_after_claim(ctx, case_id, return_to), status_code=303)


#: Why a claim from a screen changed nothing (besides a case that does not exist).
ClaimRefusal = social.CaseConflict | social.InvalidAssigneeError


def _claim_refused(
    ctx: LaunchContext,
    database: DatabaseDep,
    work: Casework,
    case_id: int,
    return_to: ClaimReturn,
    refusal: ClaimRefusal,
) -> HTMLResponse:
    """The screen the claim came from again, saying why nothing changed: 400 for a user
    no case can be assigned to, 409 for a case taken or closed meanwhile."""
    if return_to == "case":
        # imported here: smart_app.casefile builds on this module
        from smart_app.casefile import claim_refused

        return claim_refused(ctx, database, work, case_id, refusal)
    if isinstance(refusal, social.InvalidAssigneeError):
        problem: tuple[str, str | None] = ("not-a-practitioner", None)
        return _worklist_page(ctx, database, WorklistQuery(), problem=problem, status=400)
    problem = (refusal.reason, refusal.holder_display)
    return _worklist_page(ctx, database, WorklistQuery(), problem=problem, status=409)


def _after_claim(ctx: LaunchContext, case_id: int, return_to: ClaimReturn) -> str:
    """Where a claim returns to: the case page's button to the case the social worker was
    reading, the worklist's to her own cases (the one just taken among them)."""
    if return_to == "case":
        return pinned(ctx, f"/social/cases/{case_id}")
    return pinned(ctx, f"/social?view=mine&claimed={case_id}")


def _worklist_page(
    ctx: LaunchContext,
    database: DatabaseDep,
    wanted: WorklistQuery,
    *,
    problem: tuple[str, str | None] | None = None,
    notice: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    page = _listing(ctx, database, wanted)
    html = TEMPLATES.get_template("social/worklist.html").render(
        t=partial(_message, ctx.language),
        lang=ctx.language,
        product_name=translate(ctx.language, "product.name"),
        csrf_token=csrf_token(ctx),
        launch=(LAUNCH_PARAM, ctx.session_id),  # the filter form's, for this page's launch
        pinned=partial(pinned, ctx),  # its links and forms stay with this page's launch
        prefix=ctx.path_prefix,
        me=ctx.actor,
        can_claim=social.assignable(ctx.actor),
        wanted=wanted,
        page=page,
        next_page=_next_page(ctx, wanted, page.next_cursor),
        problem=problem,
        notice=notice,
        claimed=_claimed(page, wanted),
        trigger=lambda code: terminology.display("hague-trigger", code, ctx.language),
        local=local,
    )
    return HTMLResponse(html, status_code=status, headers=security_headers(ctx))


def _claimed(page: CasePage, wanted: WorklistQuery) -> str | None:
    """Whom the case a claim just took is about, for the page to confirm it (found by
    review: the worklist came back showing "mine" and said nothing): as listed, else by
    its number."""
    if wanted.claimed is None:
        return None
    item = next((item for item in page.items if item.id == wanted.claimed), None)
    if item is None:
        return f"#{wanted.claimed}"
    return item.patient_display or item.patient


def _next_page(ctx: LaunchContext, wanted: ListingQuery, cursor: str | None) -> str | None:
    """The address of the list's next page, with the filters of this one."""
    if cursor is None:
        return None
    query: dict[str, object] = {
        "status": wanted.status,
        "view": wanted.view,
        "sort": wanted.sort,
        "limit": wanted.limit,
    }
    if wanted.older_than_days is not None:
        query["older_than_days"] = wanted.older_than_days
    if wanted.overdue:
        query["overdue"] = "true"
    return pinned(ctx, f"/social?{urlencode({**query, 'cursor': cursor})}")


def _message(language: Language, message_id: str, **values: object) -> str:
    """A message of this screen's catalogue domain (ids prefixed ``social.``)."""
    return translate(language, f"social.{message_id}", **values)


# -- shared by the API and the screen -------------------------------------------------------


def _listing(ctx: LaunchContext, database: DatabaseDep, wanted: ListingQuery) -> CasePage:
    """A page of the list, its reading audited. Raises ``social.InvalidCursorError``."""
    with database.session() as session:
        page = social.list_cases(
            session,
            ctx.tenant.id,
            ctx.actor,
            wanted.filter(),
            limit=wanted.limit,
            cursor=wanted.cursor,
            today=local_today(),  # as the case page counts overdue
        )
        # The page shows each patient's name, children's ages and triggers: audited in each
        # patient's own trail, on the server of the patient's case (not the session's).
        listed = (
            audit.Listed(ctx.tenant.id, item.fhir_server, item.patient) for item in page.items
        )
        audit.record_listing(session, ctx.actor, listed, utcnow())
    return page


def _api_change(
    ctx: LaunchContext, database: DatabaseDep, case_id: int, assignee: str | None, version: int
) -> AssignmentResponse:
    try:
        done = _change(ctx, database, case_id, assignee, version)
    except social.InvalidAssigneeError as error:
        raise HTTPException(400, str(error)) from error
    except social.CaseNotFoundError as error:
        raise HTTPException(404, str(error)) from error
    except social.CaseConflict as conflict:
        raise HTTPException(
            409, {"message": conflict.message, "row_version": conflict.current_version}
        ) from conflict
    return AssignmentResponse(
        id=case_id, assigned_to=done.assigned_to, row_version=done.row_version
    )


def _change(
    ctx: LaunchContext, database: DatabaseDep, case_id: int, assignee: str | None, version: int
) -> social.Assignment:
    """Assign the case and audit it in one unit of work; a refusal is audited on its own.
    The assignee is named as the audit names users (``audit.actor_url``): a colleague's
    ``Practitioner/5`` is the one of the assigning user's EHR, and two EHRs of one
    hospital may each have one (their worklist is one)."""
    assignee = actor_url(assignee, ctx.fhir_base_url) if assignee is not None else None
    try:
        with database.session() as session:
            done = social.assign_case(
                session,
                ctx.tenant.id,
                case_id,
                assignee=assignee,
                assignee_name=_name_of(ctx, assignee),
                expected_version=version,
                now=utcnow(),
            )
            flag = identifier_search("Flag", identifier_system("concern"), done.flag_identifier)
            fact = _fact(ctx, AuditAction.UPDATE, done.patient_ref, (flag,))
            audit.record_local(session, ctx.tenant.id, fact, done.fhir_base_url)
    except (social.CaseNotFoundError, social.CaseConflict, social.InvalidAssigneeError):
        audit_refusal(ctx, database, case_id=case_id)
        raise
    return done


def _name_of(ctx: LaunchContext, assignee: str | None) -> str | None:
    """The assignee's name as far as this request knows it: the user's own (her launch
    named her) when she takes the case; a colleague is named by reference only
    (``social.assign_case``)."""
    if assignee is None or assignee != ctx.actor:
        return None
    return user_display(ctx.user.fhir_user, ctx.user.name)


def _fact(
    ctx: LaunchContext,
    action: AuditAction,
    patient_ref: str | None,
    entities: tuple[str, ...],
    outcome: Outcome = "success",
) -> AuditFact:
    return AuditFact(
        actor=ctx.actor,
        action=action,
        patient_ref=patient_ref,
        entities=entities,
        outcome=outcome,
        at=utcnow(),
    )
