"""App sessions: the patient's name as the FHIR server gave it to the triage page.

A concern raised at triage goes on the worklist with the patient's name. It came from a
hidden field of the triage form, which the browser posts back: a nurse's session could
put any name on any patient's case, the name social workers choose a case by (found by
review). The session now keeps the name the server read (``service.triage``), and the
worklist takes it from there. Sessions of earlier releases have none: a concern they
raise is listed without a name until a social worker opens the case, which reads it.

Revision ID: 0024_session_patient_display
Revises: 0022_launch_states_tenant_expiry
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024_session_patient_display"
down_revision: str | Sequence[str] | None = "0022_launch_states_tenant_expiry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("smart_app_sessions", sa.Column("patient_display", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("smart_app_sessions", "patient_display")
