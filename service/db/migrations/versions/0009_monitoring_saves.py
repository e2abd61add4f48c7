"""Monitoring: each save read once into the findings the figures count.

Revision ID: 0009_monitoring_saves
Revises: 0008_monitoring
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.base

revision: str = "0009_monitoring_saves"
down_revision: str | Sequence[str] | None = "0008_monitoring"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"],
        ["tenants.id"],
        name=op.f(f"fk_{table}_tenant_id_tenants"),
        ondelete="CASCADE",
    )


def upgrade() -> None:
    utc = service.db.base.UTCDateTime
    op.create_table(
        "monitoring_saves",
        sa.Column("outbox_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("saved_at", utc(), nullable=False),
        sa.Column("readable", sa.Boolean(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        _tenant_fk("monitoring_saves"),
        sa.PrimaryKeyConstraint("outbox_id", name=op.f("pk_monitoring_saves")),
    )
    op.create_table(
        "monitoring_findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=False),
        sa.Column("finding_id", sa.String(length=64), nullable=False),
        sa.Column("step", sa.String(length=10), nullable=False),
        sa.Column("case_key", sa.String(length=200), nullable=False),
        sa.Column("outcome", sa.String(length=40), nullable=True),
        sa.Column("children", sa.Integer(), nullable=False),
        sa.Column("recorded_at", utc(), nullable=False),
        sa.Column("saved_at", utc(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        _tenant_fk("monitoring_findings"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitoring_findings")),
        sa.UniqueConstraint(
            "outbox_id", "finding_id", name=op.f("uq_monitoring_findings_outbox_id_finding_id")
        ),
    )
    for table in ("monitoring_saves", "monitoring_findings"):
        op.create_index(op.f(f"ix_{table}_tenant_id"), table, ["tenant_id"])
    op.create_index("ix_monitoring_saves_saved", "monitoring_saves", ["tenant_id", "saved_at"])
    op.create_index(
        "ix_monitoring_findings_saved", "monitoring_findings", ["tenant_id", "saved_at", "step"]
    )


def downgrade() -> None:
    op.drop_index("ix_monitoring_findings_saved", table_name="monitoring_findings")
    op.drop_index("ix_monitoring_saves_saved", table_name="monitoring_saves")
    for table in ("monitoring_findings", "monitoring_saves"):
        op.drop_index(op.f(f"ix_{table}_tenant_id"), table_name=table)
        op.drop_table(table)
