"""Concerns: the names of the nurse who flagged a concern and of the social worker who has
it (``flagged_by_display``, ``assigned_to_display``), next to their FHIR references.

A social worker calls the nurse and looks for the colleague by name; the worklist shows a
name wherever it knows one, the reference otherwise. Existing rows have no names: the case
page fills them in from the FHIR server when the case is opened
(``service.casework.Casework.open_case``).

Revision ID: 0018_concern_user_names
Revises: 0017_audit_fhir_server
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018_concern_user_names"
down_revision: str | Sequence[str] | None = "0017_audit_fhir_server"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("concerns") as batch:
        batch.add_column(sa.Column("flagged_by_display", sa.String(200), nullable=True))
        batch.add_column(sa.Column("assigned_to_display", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("concerns") as batch:
        batch.drop_column("assigned_to_display")
        batch.drop_column("flagged_by_display")
