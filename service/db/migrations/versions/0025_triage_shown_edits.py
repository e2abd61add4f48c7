"""Triage: the waiting edits of a child that a page showed, per app session.

A save posting a child's version with other values is an edit of that version. When
another save's edit of the same version was waiting (or delivered since), it counted that
edit as what the page had shown, and laid the nurse's values over it. It counted any
such edit, another nurse's too, that her page never showed: her save overwrote that
nurse's delivered change without a conflict (found by review). The page now remembers
each waiting edit it shows (its fingerprint, as ``triage_shown_children`` does for the
versions), and only those count.

Revision ID: 0025_triage_shown_edits
Revises: 0024_session_patient_display
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025_triage_shown_edits"
down_revision: str | Sequence[str] | None = "0024_session_patient_display"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "triage_shown_edits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["smart_app_sessions.id"],
            name=op.f("fk_triage_shown_edits_session_id_smart_app_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triage_shown_edits")),
        sa.UniqueConstraint(
            "session_id",
            "ref",
            "fingerprint",
            name=op.f("uq_triage_shown_edits_session_id_ref_fingerprint"),
        ),
    )


def downgrade() -> None:
    op.drop_table("triage_shown_edits")
