"""Triage: the waiting edits of a child that a page showed, per page, not per app session.

``triage_shown_edits`` remembered the edits shown by any page of the session. A second tab
of the same session (or a page reached by the Back button), opened before another nurse's
edit and never showing it, counted it as shown all the same: saved as loaded, it laid the
old values over that nurse's change and undid it without a conflict (found by review).
The rows now name the page (``page_id``).

The rows of pages open at the upgrade are dropped, not guessed: a save from such a page
counts no waiting edit as shown. One that changes a child another save's edit waited for
is refused as a conflict (If-Match) and shown again. One that puts the version's own
values back over such an edit the page showed (an undo) is taken for a confirmation: the
edit stays (found by review). Only a page open across the upgrade that showed another
save's edit waiting (the record unreachable then) can meet this.

Revision ID: 0026_shown_edits_by_page
Revises: 0025_triage_shown_edits
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026_shown_edits_by_page"
down_revision: str | Sequence[str] | None = "0025_triage_shown_edits"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _shown_edits(by_page: bool) -> None:
    keys = (
        ["session_id", "page_id", "ref", "fingerprint"]
        if by_page
        else ["session_id", "ref", "fingerprint"]
    )
    page = [sa.Column("page_id", sa.String(length=32), nullable=False)] if by_page else []
    op.create_table(
        "triage_shown_edits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        *page,
        sa.Column("ref", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["smart_app_sessions.id"],
            name=op.f("fk_triage_shown_edits_session_id_smart_app_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triage_shown_edits")),
        sa.UniqueConstraint(*keys, name=op.f(f"uq_triage_shown_edits_{'_'.join(keys)}")),
    )


def upgrade() -> None:
    op.drop_table("triage_shown_edits")
    _shown_edits(by_page=True)


def downgrade() -> None:
    op.drop_table("triage_shown_edits")
    _shown_edits(by_page=False)
