"""CDS Hooks: seen JWT ids (replay protection) and card feedback.

Revision ID: 0003_cds
Revises: 0002_tenant_config
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.base

revision: str = "0003_cds"
down_revision: str | Sequence[str] | None = "0002_tenant_config"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tenant_column(table: str) -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f(f"fk_{table}_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "cds_seen_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issuer", sa.String(length=500), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", service.db.base.UTCDateTime(), nullable=False),
        *_tenant_column("cds_seen_tokens"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cds_seen_tokens")),
        sa.UniqueConstraint(
            "tenant_id", "issuer", "jti", name=op.f("uq_cds_seen_tokens_tenant_id_issuer_jti")
        ),
    )
    op.create_index(
        op.f("ix_cds_seen_tokens_expires_at"), "cds_seen_tokens", ["expires_at"], unique=False
    )
    op.create_index(
        op.f("ix_cds_seen_tokens_tenant_id"), "cds_seen_tokens", ["tenant_id"], unique=False
    )
    op.create_table(
        "cds_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.String(length=63), nullable=False),
        sa.Column("card_uuid", sa.String(length=36), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("override_system", sa.String(length=500), nullable=True),
        sa.Column("override_code", sa.String(length=100), nullable=True),
        sa.Column("outcome_at", service.db.base.UTCDateTime(), nullable=False),
        sa.Column("issuer", sa.String(length=500), nullable=True),
        sa.Column("received_at", service.db.base.UTCDateTime(), nullable=False),
        *_tenant_column("cds_feedback"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cds_feedback")),
        sa.UniqueConstraint(
            "tenant_id",
            "card_uuid",
            "outcome",
            "outcome_at",
            name=op.f("uq_cds_feedback_tenant_id_card_uuid_outcome_outcome_at"),
        ),
    )
    op.create_index(op.f("ix_cds_feedback_tenant_id"), "cds_feedback", ["tenant_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_cds_feedback_tenant_id"), table_name="cds_feedback")
    op.drop_table("cds_feedback")
    op.drop_index(op.f("ix_cds_seen_tokens_tenant_id"), table_name="cds_seen_tokens")
    op.drop_index(op.f("ix_cds_seen_tokens_expires_at"), table_name="cds_seen_tokens")
    op.drop_table("cds_seen_tokens")
