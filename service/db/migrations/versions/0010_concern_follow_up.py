"""Concerns: the next step 5 follow-up date, for the worklist's overdue cases.

Revision ID: 0010_concern_follow_up
Revises: 0005_outbox_audit_concerns
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_concern_follow_up"
down_revision: str | Sequence[str] | None = "0005_outbox_audit_concerns"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("concerns") as batch:
        batch.add_column(sa.Column("follow_up_due", sa.Date(), nullable=True))
    op.create_index("ix_concerns_follow_up", "concerns", ["tenant_id", "status", "follow_up_due"])


def downgrade() -> None:
    op.drop_index("ix_concerns_follow_up", table_name="concerns")
    with op.batch_alter_table("concerns") as batch:
        batch.drop_column("follow_up_due")
