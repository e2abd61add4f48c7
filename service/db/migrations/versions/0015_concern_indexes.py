"""Concerns: an index for the screen's worklist order (acute danger first, then newest) and
one to find the case of a refused outbox entry.

Without the first, every opening of the worklist sorted all of a hospital's open cases
(25 ms for 10,000 on SQLite and PostgreSQL, against 3 ms newest first: ``tests/bench/
worklist.py``); without the second, a refusal recorded by the outbox scanned the table.

Revision ID: 0015_concern_indexes
Revises: 0014_concern_before_save
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015_concern_indexes"
down_revision: str | Sequence[str] | None = "0014_concern_before_save"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "ix_concerns_worklist_acute": ["tenant_id", "status", "acute_danger", "flagged_at", "id"],
    "ix_concerns_outbox": ["outbox_id"],
}


def upgrade() -> None:
    for name, columns in _INDEXES.items():
        op.create_index(name, "concerns", columns)


def downgrade() -> None:
    for name in _INDEXES:
        op.drop_index(name, table_name="concerns")
