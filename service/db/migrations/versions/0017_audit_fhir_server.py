"""Audit records: the FHIR server the patient is on, and the patient index by server.

A hospital with two EHRs has two FHIR servers, on which ``Patient/123`` may be two
different people: an access request answered from the trail by patient reference alone
could mix them. Existing rows take the server of their outbox entry (every read, write and
sign-in with a patient has one); the others (a case's assignment, a ``kindreflex audit``
reading, rows without a patient) keep none, and ``kindreflex audit`` shows them with any
server. The index finds one patient's rows on one server in time order, and the servers
one patient reference occurs on.

Revision ID: 0017_audit_fhir_server
Revises: 0016_outbox_patient_index
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017_audit_fhir_server"
down_revision: str | Sequence[str] | None = "0016_outbox_patient_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_records") as batch:
        batch.add_column(sa.Column("fhir_base_url", sa.String(500), nullable=True))
    op.execute(
        "UPDATE audit_records SET fhir_base_url = (SELECT o.fhir_base_url FROM outbox_entries o "
        "WHERE o.id = audit_records.outbox_id) WHERE outbox_id IS NOT NULL"
    )
    op.drop_index("ix_audit_records_patient", table_name="audit_records")
    _patient_index(["tenant_id", "patient_ref", "fhir_base_url", "recorded_at"])


def downgrade() -> None:
    op.drop_index("ix_audit_records_patient", table_name="audit_records")
    with op.batch_alter_table("audit_records") as batch:
        batch.drop_column("fhir_base_url")
    _patient_index(["tenant_id", "patient_ref", "recorded_at"])


def _patient_index(columns: list[str]) -> None:
    op.create_index("ix_audit_records_patient", "audit_records", columns)
