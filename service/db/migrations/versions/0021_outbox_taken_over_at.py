"""Outbox: when an entry waiting for authorisation was taken over (``taken_over_at``).

The readiness check fails when a pending entry has waited longer than ``READY_MAX_AGE``
(15 minutes). It counted from the save (``created_at``), so an entry that had waited for a
sign-in and was taken over by the next launch for its patient hours later
(``service.outbox.Outbox.adopt_session``) made ``/readyz`` fail from that moment until the
worker's next cycle sent it: a false alarm. The wait now counts from the take-over, when
there was one. Existing entries have none recorded (NULL: from the save, as before); one
taken over before this migration may still fail readiness once, until it is sent.

Nullable, so SQLite adds the column in place: a NOT NULL column filled from ``created_at``
would need the table copied, and ``audit_records`` refers to it.

Revision ID: 0021_outbox_taken_over_at
Revises: 0020_outbox_races
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.base

revision: str = "0021_outbox_taken_over_at"
down_revision: str | Sequence[str] | None = "0020_outbox_races"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_entries") as batch:
        batch.add_column(sa.Column("taken_over_at", service.db.base.UTCDateTime(), nullable=True))


def downgrade() -> None:
    # in place, not in batch mode: SQLite (3.35 and later) drops a column itself, where a
    # copy of the table fails on the audit rows that refer to it
    op.drop_column("outbox_entries", "taken_over_at")
