"""Concerns: when the case was closed, for a closed case's days open.

A closed case's days open counted from its flag to today, whatever the day it was closed:
reviewing closed cases, one closed after ten days said 400 a year on (found by review).
They now count up to ``closed_at``, set when a save closes the case or the case page finds
it closed in the EHR (the Flag's ``period.end``). A case closed before this release gets
the row's last change (``updated_at``): its closing, unless a referral's status was updated
since (then that later day). The Flag's end is on the FHIR server, which a migration does
not reach.

Revision ID: 0028_concern_closed_at
Revises: 0023_concern_assignee_absolute
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.base

revision: str = "0028_concern_closed_at"
down_revision: str | Sequence[str] | None = "0023_concern_assignee_absolute"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("concerns", sa.Column("closed_at", service.db.base.UTCDateTime(), nullable=True))
    op.execute("UPDATE concerns SET closed_at = updated_at WHERE status = 'closed'")


def downgrade() -> None:
    # in place, not in batch mode: SQLite (3.35 and later) drops a column itself, where a
    # copy of the table would have to rebuild the worklist's partial index
    op.drop_column("concerns", "closed_at")
