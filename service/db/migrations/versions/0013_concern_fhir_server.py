"""Concerns: the FHIR server the patient is on; one open concern per patient *per server*;
whether the case's route comes from acute danger.

A hospital with two EHRs has two FHIR servers, on which ``Patient/123`` may be two
different people: a nurse of the second EHR joined the first one's open concern. Existing
rows take the server their outbox entry was delivered to. Acute danger is marked on the
worklist; existing rows start unmarked (opening the case shows it from the server).
The downgrade fails while one patient id has open concerns on two servers: close one first.

Revision ID: 0013_concern_fhir_server
Revises: 0010_concern_follow_up
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_concern_fhir_server"
down_revision: str | Sequence[str] | None = "0010_concern_follow_up"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = sa.text("status = 'open'")


def upgrade() -> None:
    with op.batch_alter_table("concerns") as batch:
        batch.add_column(sa.Column("fhir_base_url", sa.String(500), nullable=True))
        batch.add_column(
            sa.Column("acute_danger", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.execute(
        "UPDATE concerns SET fhir_base_url = (SELECT o.fhir_base_url FROM outbox_entries o "
        "WHERE o.id = concerns.outbox_id)"
    )
    # A row without an outbox entry has no known server; it matches no launch.
    op.execute("UPDATE concerns SET fhir_base_url = '' WHERE fhir_base_url IS NULL")
    op.drop_index("uq_concerns_open_patient", table_name="concerns")
    with op.batch_alter_table("concerns") as batch:
        batch.alter_column("fhir_base_url", existing_type=sa.String(500), nullable=False)
    _open_patient_index(["tenant_id", "fhir_base_url", "patient_ref"])


def downgrade() -> None:
    op.drop_index("uq_concerns_open_patient", table_name="concerns")
    with op.batch_alter_table("concerns") as batch:
        batch.drop_column("acute_danger")
        batch.drop_column("fhir_base_url")
    _open_patient_index(["tenant_id", "patient_ref"])


def _open_patient_index(columns: list[str]) -> None:
    op.create_index(
        "uq_concerns_open_patient",
        "concerns",
        columns,
        unique=True,
        sqlite_where=_OPEN,
        postgresql_where=_OPEN,
    )
