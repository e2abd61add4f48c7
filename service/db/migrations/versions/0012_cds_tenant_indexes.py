"""CDS hot path: drop the tenant_id indexes their unique constraints already cover.

Every hook call writes a replay-ledger row (and, with a card, a card row); the
single-column index cost each of those inserts and served no query the constraint
starting with tenant_id does not.

Revision ID: 0012_cds_tenant_indexes
Revises: 0003_cds, 0008_monitoring
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012_cds_tenant_indexes"
down_revision: str | Sequence[str] | None = ("0003_cds", "0008_monitoring")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEXES = {
    "cds_seen_tokens": "ix_cds_seen_tokens_tenant_id",
    "cds_cards": "ix_cds_cards_tenant_id",
}


def upgrade() -> None:
    for table, index in _INDEXES.items():
        op.drop_index(index, table_name=table)


def downgrade() -> None:
    for table, index in _INDEXES.items():
        op.create_index(index, table, ["tenant_id"], unique=False)
