"""Outbox: an index on the patient of an entry.

A returning patient's chart shows the children of saves still waiting for delivery, and a
save with a new child looks for an earlier save that queued it (``service.triage``): both
read one patient's entries, which without this index meant reading the whole table, the
delivered entries of every patient included, on each chart load and save.

Revision ID: 0016_outbox_patient_index
Revises: 0015_concern_indexes
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016_outbox_patient_index"
down_revision: str | Sequence[str] | None = "0015_concern_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_outbox_entries_patient", "outbox_entries", ["tenant_id", "patient_ref"])


def downgrade() -> None:
    op.drop_index("ix_outbox_entries_patient", table_name="outbox_entries")
