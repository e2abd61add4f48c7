"""Launch states: one index on (tenant_id, expires_at), instead of tenant_id alone.

Every launch counts its hospital's unexpired launch states and reads the first expiry
(``smart_app.launch._refuse_when_busy``), up to 20 000 rows a hospital: with tenant_id
alone it read each of the hospital's rows, expired ones not yet purged included, for its
expiry. The composite index answers the count and the minimum from one range of itself,
and serves every look-up by tenant_id alone (the cascade from ``tenants``), so that
index goes: it would only cost every launch's insert.

Revision ID: 0022_launch_states_tenant_expiry
Revises: 0011_triage_shown_children
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022_launch_states_tenant_expiry"
down_revision: str | Sequence[str] | None = "0011_triage_shown_children"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "smart_launch_states"


def upgrade() -> None:
    op.create_index("ix_smart_launch_states_tenant_expires", _TABLE, ["tenant_id", "expires_at"])
    op.drop_index("ix_smart_launch_states_tenant_id", table_name=_TABLE)


def downgrade() -> None:
    op.create_index("ix_smart_launch_states_tenant_id", _TABLE, ["tenant_id"])
    op.drop_index("ix_smart_launch_states_tenant_expires", table_name=_TABLE)
