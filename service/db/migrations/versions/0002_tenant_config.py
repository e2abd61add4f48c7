"""Versioned tenant configuration documents.

Revision ID: 0002_tenant_config
Revises: 0001_tenants
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.base

revision: str = "0002_tenant_config"
down_revision: str | Sequence[str] | None = "0001_tenants"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_config_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", service.db.base.UTCDateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=500), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_config_versions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_config_versions")),
        sa.UniqueConstraint(
            "tenant_id", "version", name=op.f("uq_tenant_config_versions_tenant_id_version")
        ),
    )
    op.create_index(
        op.f("ix_tenant_config_versions_tenant_id"),
        "tenant_config_versions",
        ["tenant_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_tenant_config_versions_tenant_id"), table_name="tenant_config_versions")
    op.drop_table("tenant_config_versions")
