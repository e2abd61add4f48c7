"""When a user last used her session, for the inactivity limit of the app's sessions
(``smart_app.session``) and the admin's (``service.admin.access``):
``KINDREFLEX_SESSION_IDLE_MINUTES``.

A request records the use only when the recorded one is older than
``ACTIVITY_RESOLUTION``, so that a page's requests (and a JSON API's polling) do not each
write the session's row; the idle limit is therefore kept to within it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from service.db.models import AdminSession, AppSession

ACTIVITY_RESOLUTION = timedelta(minutes=1)


def last_use(row: AdminSession | AppSession) -> datetime:
    """Its user's last request; a session stored before uses were recorded counts from its
    start."""
    return row.last_active_at or row.created_at


def record_use(session: Session, row: AdminSession | AppSession, now: datetime) -> None:
    """Record a request of ``row`` at ``now``, when its recorded last use is older than
    ``ACTIVITY_RESOLUTION``. Conditional, so that of two instances one writes."""
    if last_use(row) > now - ACTIVITY_RESOLUTION:
        return
    model = type(row)
    session.execute(
        update(model)
        .where(
            model.id == row.id,
            or_(
                model.last_active_at.is_(None),
                model.last_active_at <= now - ACTIVITY_RESOLUTION,
            ),
        )
        .values(last_active_at=now)
    )
