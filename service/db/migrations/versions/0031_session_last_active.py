"""App and admin sessions: the user's last request, for the inactivity limit.

A session lasted its 8 hours however long it lay unused, on the emergency department's
shared workstations; a hospital's security policy (ISO 27799, NEN 7510) asks for an
inactivity limit (``KINDREFLEX_SESSION_IDLE_MINUTES``). Each session now records its
user's last request (to the minute). A session open at the upgrade counts as used then:
nobody is signed out by the upgrade itself, and each ends at the latest the idle limit
after it (or at its 8 hours).

Nullable, so SQLite adds the columns in place: a NOT NULL column would need the tables
copied, and ``triage_shown_children`` and ``triage_shown_edits`` refer to the app's.

Revision ID: 0031_session_last_active
Revises: 0030_session_fingerprint, 0006_admin
Create Date: 2026-12-09
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import service.db.base

revision: str = "0031_session_last_active"
# both tables' branches: admin_sessions is made on a branch of its own (a dependency
# instead dropped 0006_admin from the recorded heads, and `db purge` and `serve` on
# PostgreSQL took the schema for outdated)
down_revision: str | Sequence[str] | None = ("0030_session_fingerprint", "0006_admin")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("smart_app_sessions", "admin_sessions")


def upgrade() -> None:
    now = datetime.now(UTC)
    for name in _TABLES:
        op.add_column(
            name, sa.Column("last_active_at", service.db.base.UTCDateTime(), nullable=True)
        )
        sessions = sa.table(name, sa.column("last_active_at", service.db.base.UTCDateTime()))
        op.execute(sa.update(sessions).values(last_active_at=now))


def downgrade() -> None:
    # in place, not in batch mode: SQLite (3.35 and later) drops a column itself, where a
    # copy of the table fails on the rows that refer to it
    for name in _TABLES:
        op.drop_column(name, "last_active_at")
