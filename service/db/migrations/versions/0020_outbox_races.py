"""Outbox: how many races at delivery an entry has lost (``outbox_entries.races``).

A create-or-merge lays ours over the version of a resource its search finds at delivery,
with If-Match on that version; another writer between that read and the write makes the
server answer 412. Nobody was shown that version, so it is a race, not a conflict: the
entry is merged and sent again, a few times (``service.outbox.RACES_RETRIED``), then it
is a conflict. Existing entries have lost none.

Revision ID: 0020_outbox_races
Revises: 0019_audit_outbox_index
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020_outbox_races"
down_revision: str | Sequence[str] | None = "0019_audit_outbox_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_entries") as batch:
        batch.add_column(sa.Column("races", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    # in place, not in batch mode: SQLite (3.35 and later) drops a column itself, where a
    # copy of the table fails on the audit rows that refer to it
    op.drop_column("outbox_entries", "races")
