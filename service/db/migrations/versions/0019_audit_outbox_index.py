"""Audit records: an index on the outbox entry a row belongs to (``audit_records.outbox_id``).

When a delivery fails, the outbox looks up the save's own audit row by its entry to write
the failure beside it (``service.outbox._audit_failure``), and ``kindreflex audit`` joins
the rows to their entries: without this index each failure read the whole trail, a table
that only grows.

Revision ID: 0019_audit_outbox_index
Revises: 0018_concern_user_names
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019_audit_outbox_index"
down_revision: str | Sequence[str] | None = "0018_concern_user_names"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_audit_records_outbox", "audit_records", ["outbox_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_records_outbox", table_name="audit_records")
