"""EHR administrator journey: bootstrap tokens, admin sessions, admin events.

Revision ID: 0006_admin
Revises: 0002_tenant_config
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.base

revision: str = "0006_admin"
down_revision: str | Sequence[str] | None = "0002_tenant_config"
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
        "admin_bootstrap_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.Column("expires_at", utc(), nullable=False),
        sa.Column("used_at", utc(), nullable=True),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        _tenant_fk("admin_bootstrap_tokens"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_bootstrap_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_admin_bootstrap_tokens_token_hash")),
    )
    op.create_table(
        "admin_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=500), nullable=False),
        sa.Column("created_at", utc(), nullable=False),
        sa.Column("expires_at", utc(), nullable=False),
        sa.Column("ended_at", utc(), nullable=True),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        _tenant_fk("admin_sessions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_admin_sessions_token_hash")),
    )
    op.create_table(
        "admin_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", utc(), nullable=False),
        sa.Column("actor", sa.String(length=500), nullable=False),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        _tenant_fk("admin_events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_events")),
    )
    for table in ("admin_bootstrap_tokens", "admin_sessions", "admin_events"):
        op.create_index(op.f(f"ix_{table}_tenant_id"), table, ["tenant_id"], unique=False)
    op.create_index(op.f("ix_admin_events_at"), "admin_events", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_admin_events_at"), table_name="admin_events")
    for table in ("admin_events", "admin_sessions", "admin_bootstrap_tokens"):
        op.drop_index(op.f(f"ix_{table}_tenant_id"), table_name=table)
        op.drop_table(table)
