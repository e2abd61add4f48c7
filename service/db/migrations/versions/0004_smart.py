"""SMART App Launch: launch states, app sessions, and the deployment's signing keys.

Revision ID: 0004_smart
Revises: 0002_tenant_config
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.base

revision: str = "0004_smart"
down_revision: str | Sequence[str] | None = "0002_tenant_config"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = service.db.base.UTCDateTime


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
        "signing_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("alg", sa.String(length=10), nullable=False),
        sa.Column("private_key", sa.Text(), nullable=False),
        sa.Column("sealed", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTC_DATETIME(), nullable=False),
        sa.Column("retired_at", UTC_DATETIME(), nullable=True),
        sa.Column("publish_until", UTC_DATETIME(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signing_keys")),
        sa.UniqueConstraint("kid", name=op.f("uq_signing_keys_kid")),
    )
    op.create_table(
        "smart_launch_states",
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("browser_hash", sa.String(length=64), nullable=False),
        sa.Column("registration_id", sa.String(length=63), nullable=False),
        sa.Column("path_prefix", sa.String(length=80), nullable=False),
        sa.Column("code_verifier", sa.String(length=128), nullable=False),
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("server", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_DATETIME(), nullable=False),
        sa.Column("expires_at", UTC_DATETIME(), nullable=False),
        *_tenant_column("smart_launch_states"),
        sa.PrimaryKeyConstraint("state_hash", name=op.f("pk_smart_launch_states")),
    )
    op.create_index(
        op.f("ix_smart_launch_states_expires_at"), "smart_launch_states", ["expires_at"]
    )
    op.create_index(op.f("ix_smart_launch_states_tenant_id"), "smart_launch_states", ["tenant_id"])
    op.create_table(
        "smart_app_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("cookie_hash", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("registration_id", sa.String(length=63), nullable=False),
        sa.Column("path_prefix", sa.String(length=80), nullable=False),
        sa.Column("fhir_base_url", sa.String(length=500), nullable=False),
        sa.Column("token_endpoint", sa.String(length=500), nullable=False),
        sa.Column("fhir_user", sa.String(length=500), nullable=False),
        sa.Column("user_name", sa.String(length=200), nullable=False),
        sa.Column("roles", sa.JSON(), nullable=False),
        sa.Column("language", sa.String(length=2), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=True),
        sa.Column("encounter_id", sa.String(length=64), nullable=True),
        sa.Column("app_context", sa.Text(), nullable=True),
        sa.Column("launch_details", sa.JSON(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("refresh_token", sa.Text(), nullable=True),
        sa.Column("sealed", sa.Boolean(), nullable=False),
        sa.Column("access_expires_at", UTC_DATETIME(), nullable=False),
        sa.Column("created_at", UTC_DATETIME(), nullable=False),
        sa.Column("expires_at", UTC_DATETIME(), nullable=False),
        *_tenant_column("smart_app_sessions"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_smart_app_sessions")),
        sa.UniqueConstraint("cookie_hash", name=op.f("uq_smart_app_sessions_cookie_hash")),
    )
    op.create_index(op.f("ix_smart_app_sessions_expires_at"), "smart_app_sessions", ["expires_at"])
    op.create_index(op.f("ix_smart_app_sessions_tenant_id"), "smart_app_sessions", ["tenant_id"])


def downgrade() -> None:
    op.drop_table("smart_app_sessions")
    op.drop_table("smart_launch_states")
    op.drop_table("signing_keys")
