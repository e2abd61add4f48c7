"""Concerns: the assignee named by an absolute URL, as the audit names users.

SMART lets an EHR send ``fhirUser`` relative to its FHIR base (``Practitioner/5``), and two
EHRs of one hospital may each have a ``Practitioner/5``: on the one worklist, the case one
of them claimed was "mine" for the other too. The service now stores the assignee as
``audit.actor_url`` names the user. A relative one stored before is resolved against the
case's own FHIR server: exact for a hospital with one EHR; with two, a claim made through
the other EHR's launch is then named as the case's EHR's user of that id (claim it again).

A small table (a hospital's cases), one UPDATE. The downgrade leaves the names absolute:
which of them were relative is not recorded, and an older release compares the
assignee with ``fhirUser`` as sent, so a case is missing from "mine" there until claimed
again, no more.

Revision ID: 0023_concern_assignee_absolute
Revises: 0021_outbox_taken_over_at
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0023_concern_assignee_absolute"
down_revision: str | Sequence[str] | None = "0021_outbox_taken_over_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        "UPDATE concerns SET assigned_to = fhir_base_url || '/' || assigned_to "
        "WHERE assigned_to IS NOT NULL "
        "AND assigned_to NOT LIKE 'http://%' AND assigned_to NOT LIKE 'https://%'"
    )


def downgrade() -> None:
    """Nothing to undo: see the module's docstring."""
