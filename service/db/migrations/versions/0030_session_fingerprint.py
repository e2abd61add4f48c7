"""App sessions: the fingerprint of the EHR registration they were launched under.

A session stayed valid while its registration kept its FHIR base: an administrator who
gave the registration another client id (a compromised client) or another role mapping (a
group's social-worker role removed) left the sessions opened before with their old powers
for up to 8 hours. A session now keeps a SHA-256 of its registration's FHIR base, client
id, client authentication and role mapping as launched, compared on every request
(``smart_app.session.registration_fingerprint``). A session opened before this release
has none (NULL) and ends at the upgrade: what it was launched under is not known. Its user
opens the app again from the EHR; a form she sends meanwhile shows its text back.

Revision ID: 0030_session_fingerprint
Revises: 0027_triage_page_saves
Create Date: 2026-12-09
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0030_session_fingerprint"
down_revision: str | Sequence[str] | None = "0027_triage_page_saves"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "smart_app_sessions",
        sa.Column("registration_fingerprint", sa.String(64), nullable=True),
    )


def downgrade() -> None:
    # in place, not in batch mode, as 0028: SQLite (3.35 and later) drops a column itself
    op.drop_column("smart_app_sessions", "registration_fingerprint")
