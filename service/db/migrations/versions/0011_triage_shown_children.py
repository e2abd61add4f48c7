"""Triage: the children a page showed, so that a save can tell a confirmation from an edit.

Revision ID: 0011_triage_shown_children
Revises: 0004_smart
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_triage_shown_children"
down_revision: str | Sequence[str] | None = "0004_smart"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "triage_shown_children",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["smart_app_sessions.id"],
            name=op.f("fk_triage_shown_children_session_id_smart_app_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triage_shown_children")),
        sa.UniqueConstraint(
            "session_id", "ref", name=op.f("uq_triage_shown_children_session_id_ref")
        ),
    )


def downgrade() -> None:
    op.drop_table("triage_shown_children")
