"""Monitoring (issue 5 §6): the cards the CDS service returned; the outbox by kind and time.

Revision ID: 0008_monitoring
Revises: 0002_tenant_config
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.base

revision: str = "0008_monitoring"
down_revision: str | Sequence[str] | None = "0002_tenant_config"
branch_labels: str | Sequence[str] | None = None
# the outbox index needs the outbox table
depends_on: str | Sequence[str] | None = "0005_outbox_audit_concerns"


def upgrade() -> None:
    op.create_table(
        "cds_cards",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.String(length=63), nullable=False),
        sa.Column("card_uuid", sa.String(length=36), nullable=False),
        sa.Column("indicator", sa.String(length=10), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("presentation", sa.String(length=64), nullable=False),
        sa.Column("issued_at", service.db.base.UTCDateTime(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_cds_cards_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cds_cards")),
        sa.UniqueConstraint(
            "tenant_id", "card_uuid", name=op.f("uq_cds_cards_tenant_id_card_uuid")
        ),
    )
    op.create_index(op.f("ix_cds_cards_tenant_id"), "cds_cards", ["tenant_id"])
    op.create_index("ix_cds_cards_issued", "cds_cards", ["tenant_id", "issued_at"])
    op.create_index(
        "ix_outbox_entries_monitoring", "outbox_entries", ["tenant_id", "kind", "created_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_entries_monitoring", table_name="outbox_entries")
    op.drop_index("ix_cds_cards_issued", table_name="cds_cards")
    op.drop_index(op.f("ix_cds_cards_tenant_id"), table_name="cds_cards")
    op.drop_table("cds_cards")
