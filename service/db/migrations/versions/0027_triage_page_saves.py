"""Triage: the saves made from each page, so that a page stands for what it saved.

A page remembered what it showed of a waiting child and what the nurse saved from it
(``triage_shown_edits``) by values alone. When a colleague then saved the child back to
the values the page first showed, a save from the page again (the Back button) took the
colleague's save for what the page showed and laid the nurse's values over it again: the
revert was undone without a conflict (found by review). ``triage_page_saves`` names each
save made from a page; what the latest of them wrote of a child is what the page stands
for.

Pages open at the upgrade have no saves recorded: they keep the rule before it.

Revision ID: 0027_triage_page_saves
Revises: 0026_shown_edits_by_page
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0027_triage_page_saves"
down_revision: str | Sequence[str] | None = "0026_shown_edits_by_page"
branch_labels: str | Sequence[str] | None = None
# the rows name outbox entries: that branch's table must be there first
depends_on: str | Sequence[str] | None = "0005_outbox_audit_concerns"


def upgrade() -> None:
    op.create_table(
        "triage_page_saves",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("page_id", sa.String(length=32), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["smart_app_sessions.id"],
            name=op.f("fk_triage_page_saves_session_id_smart_app_sessions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["outbox_id"],
            ["outbox_entries.id"],
            name=op.f("fk_triage_page_saves_outbox_id_outbox_entries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triage_page_saves")),
        sa.UniqueConstraint(
            "session_id",
            "page_id",
            "outbox_id",
            name=op.f("uq_triage_page_saves_session_id_page_id_outbox_id"),
        ),
    )
    # the purge of an outbox entry finds its rows (ON DELETE CASCADE) without a scan
    op.create_index(op.f("ix_triage_page_saves_outbox_id"), "triage_page_saves", ["outbox_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_triage_page_saves_outbox_id"), table_name="triage_page_saves")
    op.drop_table("triage_page_saves")
