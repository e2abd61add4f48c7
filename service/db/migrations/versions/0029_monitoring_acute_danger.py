"""Monitoring: whether a step 2 finding marked acute danger, for its own figure.

The figures counted a nurse's niet-pluis only; an unclear situation and acute danger,
which hand the patient to the social service as well, were counted nowhere. The unclear
ones are in ``outcome`` already; acute danger was not read. The saves with a niet-pluis or
unclear finding whose payload the purge has not emptied yet are forgotten by the
monitoring tables, so that the next report (or purge) reads them again, with it. Those
emptied before keep their rows, their acute danger not known (NULL): the payload was the
only copy the service had. A report an instance of the previous release runs before it is
replaced reads them again without it, likewise.

Revision ID: 0029_monitoring_acute_danger
Revises: 0009_monitoring_saves
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0029_monitoring_acute_danger"
down_revision: str | Sequence[str] | None = "0009_monitoring_saves"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: An emptied payload, as ``service.retention.PURGED_BUNDLE`` is stored (both databases
#: keep the JSON text they were given); written out: a migration must not change with it.
_PURGED_TEXT = '{"resourceType": "Bundle", "type": "transaction", "entry": []}'


def upgrade() -> None:
    op.add_column("monitoring_findings", sa.Column("acute_danger", sa.Boolean(), nullable=True))
    findings = sa.table(
        "monitoring_findings", sa.column("outbox_id"), sa.column("step"), sa.column("outcome")
    )
    saves = sa.table("monitoring_saves", sa.column("outbox_id"))
    outbox = sa.table("outbox_entries", sa.column("id"), sa.column("bundle", sa.JSON()))
    readable_again = (
        sa.select(findings.c.outbox_id)
        .join(outbox, outbox.c.id == findings.c.outbox_id)
        .where(
            findings.c.step == "step-2",
            findings.c.outcome.in_(("niet-pluis", "unclear")),
            sa.cast(outbox.c.bundle, sa.Text()) != _PURGED_TEXT,
        )
    )
    # the saves first: the findings' own rows choose which
    for table in (saves, findings):
        op.execute(sa.delete(table).where(table.c.outbox_id.in_(readable_again)))


def downgrade() -> None:
    # in place, not in batch mode, as 0028: SQLite (3.35 and later) drops a column itself
    op.drop_column("monitoring_findings", "acute_danger")
