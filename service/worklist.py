"""The social service's worklist: the tenant's open Kindreflex concerns (``GET /api/worklist``).

Served from our own index (``concerns``, written with the outbox entry of the save that
raised the concern), not from the FHIR server, so that it stays fast with 10,000 open
concerns: keyset pagination (newest first) over the index
``(tenant_id, status, flagged_at, id)``. The FHIR Flag stays the source of truth for the
details (the case screens of issue 5 reconcile when a case is opened).

Only social workers see it (403 for everyone else), only their own hospital's concerns,
and every listing is audited locally (who saw which patients when).
"""

from __future__ import annotations

import base64
import binascii
from datetime import date, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from service import audit
from service.api.deps import DatabaseDep
from service.audit import AuditAction, AuditFact
from service.db.base import utcnow
from service.db.models import Concern, OutboxEntry
from service.protocol import age_in_months
from smart_app.session import LaunchContext, require_role

router = APIRouter(tags=["worklist"])


class Delivery(BaseModel):
    """Where the FHIR writes of the concern's latest save stand."""

    state: str = Field(
        description="pending | delivered | failed | conflict | waiting-authorisation"
    )
    error: str | None = Field(None, description="The last error, e.g. the server's rejection.")
    outcome: dict[str, Any] | None = Field(
        None, description="The FHIR server's OperationOutcome when it refused the write."
    )


class WorklistItem(BaseModel):
    id: int
    patient: str = Field(description="Reference to the adult patient, e.g. `Patient/123`.")
    patient_display: str | None
    flag_identifier: str
    flagged_at: datetime
    flagged_by: str = Field(description="fhirUser of the nurse who flagged the concern.")
    triggers: list[str] = Field(description="Hague trigger codes that prompted the check.")
    children_ages: list[int] = Field(description="Age in whole years of each child, oldest first.")
    last_step: str
    days_open: int
    assigned_to: str | None
    row_version: int = Field(description="Send back to change the case (optimistic locking).")
    delivery: Delivery | None


class WorklistPage(BaseModel):
    items: list[WorklistItem]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: done.")


SocialWorker = Annotated[LaunchContext, Depends(require_role("social-worker"))]


@router.get("/api/worklist", summary="Open Kindreflex concerns of this hospital")
def worklist(
    ctx: SocialWorker,
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> WorklistPage:
    after = _decode_cursor(cursor) if cursor else None
    with database.session() as session:
        page = open_concerns(session, ctx.tenant.id, limit=limit, after=after, today=_today())
        audit.record_local(
            session,
            ctx.tenant.id,
            AuditFact(
                actor=ctx.user.fhir_user,
                action=AuditAction.SEARCH,
                patient_ref=None,
                entities=tuple(item.patient for item in page.items),
                outcome="success",
                at=utcnow(),
            ),
        )
    return page


def open_concerns(
    session: Session,
    tenant_id: int,
    *,
    limit: int,
    after: tuple[datetime, int] | None,
    today: date,
) -> WorklistPage:
    """One page of the tenant's open concerns, newest first, after the cursor position."""
    query = (
        select(Concern, OutboxEntry.state, OutboxEntry.last_error, OutboxEntry.outcome)
        .outerjoin(OutboxEntry, OutboxEntry.id == Concern.outbox_id)
        .where(Concern.tenant_id == tenant_id, Concern.status == "open")
        .order_by(Concern.flagged_at.desc(), Concern.id.desc())
        .limit(limit + 1)
    )
    if after is not None:
        at, row_id = after
        query = query.where(
            or_(Concern.flagged_at < at, and_(Concern.flagged_at == at, Concern.id < row_id))
        )
    rows = session.execute(query).all()
    items = [_item(*row, today=today) for row in rows[:limit]]
    more = len(rows) > limit
    last = rows[limit - 1][0] if more else None
    return WorklistPage(items=items, next_cursor=_encode_cursor(last) if last else None)


def _item(
    concern: Concern,
    state: str | None,
    error: str | None,
    outcome: dict[str, Any] | None,
    *,
    today: date,
) -> WorklistItem:
    births = sorted(date.fromisoformat(d) for d in concern.children_birth_dates)
    return WorklistItem(
        id=concern.id,
        patient=concern.patient_ref,
        patient_display=concern.patient_display,
        flag_identifier=concern.flag_identifier,
        flagged_at=concern.flagged_at,
        flagged_by=concern.flagged_by,
        triggers=concern.triggers,
        children_ages=[age_in_months(birth, today) // 12 for birth in births],
        last_step=concern.last_step,
        days_open=(today - concern.flagged_at.date()).days,
        assigned_to=concern.assigned_to,
        row_version=concern.row_version,
        delivery=None if state is None else Delivery(state=state, error=error, outcome=outcome),
    )


def _today() -> date:
    return utcnow().date()


def _encode_cursor(concern: Concern) -> str:
    raw = f"{concern.flagged_at.isoformat()}|{concern.id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        at, _, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None:
            raise ValueError("naive time")
        return moment, int(row_id)
    except (binascii.Error, UnicodeDecodeError, ValueError) as error:
        raise HTTPException(400, "cursor is not one this endpoint handed out") from error
