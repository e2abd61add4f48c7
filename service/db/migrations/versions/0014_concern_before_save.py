"""Concerns: the index row as it was before the social save it points at
(``concerns.before_save``), so that a save the FHIR server refuses puts the row back even
when the worker, not the saving request, records the refusal. Existing rows have none: a
save still pending at the upgrade is not put back should it be refused later.

Revision ID: 0014_concern_before_save
Revises: 0013_concern_fhir_server
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_concern_before_save"
down_revision: str | Sequence[str] | None = "0013_concern_fhir_server"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("concerns") as batch:
        batch.add_column(sa.Column("before_save", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("concerns") as batch:
        batch.drop_column("before_save")
