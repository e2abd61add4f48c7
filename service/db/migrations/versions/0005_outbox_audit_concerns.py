"""FHIR write path: the outbox, the local audit trail and the concerns index (worklist).

Revision ID: 0005_outbox_audit_concerns
Revises: 0002_tenant_config
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import service.db.base

revision: str = "0005_outbox_audit_concerns"
down_revision: str | Sequence[str] | None = "0002_tenant_config"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tenant_id(table: str) -> tuple[sa.Column[int], sa.ForeignKeyConstraint]:
    return (
        sa.Column("tenant_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE"
        ),
    )


def _outbox_id(table: str) -> tuple[sa.Column[int], sa.ForeignKeyConstraint]:
    return (
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["outbox_id"], ["outbox_entries.id"], name=f"fk_{table}_outbox_id_outbox_entries"
        ),
    )


def upgrade() -> None:
    utc = service.db.base.UTCDateTime
    op.create_table(
        "outbox_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("registration_id", sa.String(length=63), nullable=False),
        sa.Column("fhir_base_url", sa.String(length=500), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("author", sa.String(length=500), nullable=False),
        sa.Column("patient_ref", sa.String(length=200), nullable=True),
        sa.Column("bundle", sa.JSON(), nullable=False),
        sa.Column("witness", sa.String(length=500), nullable=True),
        sa.Column("state", sa.String(length=24), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", utc(), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", utc(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.Column("created_at", utc(), nullable=False),
        sa.Column("delivered_at", utc(), nullable=True),
        *_tenant_id("outbox_entries"),
        sa.PrimaryKeyConstraint("id", name="pk_outbox_entries"),
    )
    op.create_index("ix_outbox_entries_due", "outbox_entries", ["state", "next_attempt_at"])
    op.create_index("ix_outbox_entries_tenant_id", "outbox_entries", ["tenant_id"])
    op.create_index("ix_outbox_entries_witness", "outbox_entries", ["tenant_id", "witness"])

    op.create_table(
        "audit_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("recorded_at", utc(), nullable=False),
        sa.Column("actor", sa.String(length=500), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("patient_ref", sa.String(length=200), nullable=True),
        sa.Column("entities", sa.JSON(), nullable=False),
        sa.Column("outcome", sa.String(length=20), nullable=False),
        *_outbox_id("audit_records"),
        *_tenant_id("audit_records"),
        sa.PrimaryKeyConstraint("id", name="pk_audit_records"),
    )
    op.create_index(
        "ix_audit_records_patient", "audit_records", ["tenant_id", "patient_ref", "recorded_at"]
    )
    op.create_index("ix_audit_records_tenant_id", "audit_records", ["tenant_id"])

    op.create_table(
        "concerns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_ref", sa.String(length=200), nullable=False),
        sa.Column("patient_display", sa.String(length=200), nullable=True),
        sa.Column("flag_identifier", sa.String(length=64), nullable=False),
        sa.Column("flagged_at", utc(), nullable=False),
        sa.Column("flagged_by", sa.String(length=500), nullable=False),
        sa.Column("triggers", sa.JSON(), nullable=False),
        sa.Column("children_birth_dates", sa.JSON(), nullable=False),
        sa.Column("last_step", sa.String(length=20), nullable=False),
        sa.Column("assigned_to", sa.String(length=500), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("updated_at", utc(), nullable=False),
        sa.Column("row_version", sa.Integer(), nullable=False),
        *_outbox_id("concerns"),
        *_tenant_id("concerns"),
        sa.PrimaryKeyConstraint("id", name="pk_concerns"),
        sa.UniqueConstraint(
            "tenant_id", "flag_identifier", name="uq_concerns_tenant_id_flag_identifier"
        ),
    )
    op.create_index("ix_concerns_patient", "concerns", ["tenant_id", "patient_ref", "status"])
    open_only = sa.text("status = 'open'")
    op.create_index(
        "uq_concerns_open_patient",
        "concerns",
        ["tenant_id", "patient_ref"],
        unique=True,
        sqlite_where=open_only,
        postgresql_where=open_only,
    )
    op.create_index("ix_concerns_tenant_id", "concerns", ["tenant_id"])
    op.create_index("ix_concerns_worklist", "concerns", ["tenant_id", "status", "flagged_at", "id"])


def downgrade() -> None:
    for table in ("concerns", "audit_records", "outbox_entries"):
        op.drop_table(table)
