"""The social service's JSON API (issue 5): its cases, and claiming or assigning one.

Mounted plain and under ``/t/{tenant}``. Every endpoint requires the social-worker role
(anonymous 401, anyone else 403, both with a clear message); changes also need the
session's CSRF token (header ``X-CSRF-Token``). Every listing and every change is audited
locally: who, when, what, which patients.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from service import audit, social
from service.api.deps import DatabaseDep
from service.audit import AuditAction, AuditFact
from service.db.base import utcnow
from service.fhir.terminology import identifier_system
from service.social import CaseFilter, CasePage, CaseSort, CaseStatus, CaseView
from smart_app.session import LaunchContext, require_role, verify_csrf

router = APIRouter(prefix="/api/cases", tags=["social service"])

SocialWorker = Annotated[LaunchContext, Depends(require_role("social-worker"))]
CaseId = Annotated[int, Path(ge=1)]


class ClaimRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    row_version: int = Field(ge=1, description="The case's `row_version` as you last saw it.")


class AssignmentRequest(ClaimRequest):
    assignee: str | None = Field(
        max_length=500, description="`Practitioner/<id>` (or PractitionerRole); null: unassign."
    )


class AssignmentResponse(BaseModel):
    id: int
    assigned_to: str | None
    row_version: int


@router.get("", summary="The hospital's Kindreflex cases, filtered, sorted, paginated")
def list_cases(
    ctx: SocialWorker,
    database: DatabaseDep,
    status: CaseStatus = "open",
    view: Annotated[CaseView, Query(description="all | mine | unassigned")] = "all",
    older_than_days: Annotated[int | None, Query(ge=0, le=3650)] = None,
    sort: Annotated[CaseSort, Query(description="newest | oldest (by flag time)")] = "newest",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> CasePage:
    wanted = CaseFilter(status=status, view=view, older_than_days=older_than_days, sort=sort)
    now = utcnow()
    with database.session() as session:
        try:
            page = social.list_cases(
                session,
                ctx.tenant.id,
                ctx.user.fhir_user,
                wanted,
                limit=limit,
                cursor=cursor,
                today=now.date(),
            )
        except social.InvalidCursorError as error:
            raise HTTPException(400, str(error)) from error
        patients = tuple(item.patient for item in page.items)
        audit.record_local(session, ctx.tenant.id, _fact(ctx, AuditAction.SEARCH, None, patients))
    return page


@router.post(
    "/{case_id}/claim",
    summary="Take a case on yourself",
    dependencies=[Depends(verify_csrf)],
    responses={404: {}, 409: {}},
)
def claim(
    ctx: SocialWorker, database: DatabaseDep, case_id: CaseId, body: ClaimRequest
) -> AssignmentResponse:
    return _assign(ctx, database, case_id, ctx.user.fhir_user, body.row_version)


@router.put(
    "/{case_id}/assignment",
    summary="Assign a case to a colleague, or unassign it",
    dependencies=[Depends(verify_csrf)],
    responses={400: {}, 404: {}, 409: {}},
)
def assign(
    ctx: SocialWorker, database: DatabaseDep, case_id: CaseId, body: AssignmentRequest
) -> AssignmentResponse:
    return _assign(ctx, database, case_id, body.assignee, body.row_version)


def _assign(
    ctx: LaunchContext, database: DatabaseDep, case_id: int, assignee: str | None, version: int
) -> AssignmentResponse:
    try:
        with database.session() as session:
            done = social.assign_case(
                session,
                ctx.tenant.id,
                case_id,
                assignee=assignee,
                expected_version=version,
                now=utcnow(),
            )
            flag = f"Flag?identifier={identifier_system('concern')}|{done.flag_identifier}"
            fact = _fact(ctx, AuditAction.UPDATE, done.patient_ref, (flag,))
            audit.record_local(session, ctx.tenant.id, fact)
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


def _fact(
    ctx: LaunchContext, action: AuditAction, patient_ref: str | None, entities: tuple[str, ...]
) -> AuditFact:
    return AuditFact(
        actor=ctx.user.fhir_user,
        action=action,
        patient_ref=patient_ref,
        entities=entities,
        outcome="success",
        at=utcnow(),
    )
