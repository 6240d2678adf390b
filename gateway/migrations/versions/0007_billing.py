"""Join the ledger and the spend limits: a reservation places its credit hold, a settlement settles it,
in the same transaction (the adapters `limits.place_hold` / `limits.settle_hold` that limits.reserve/settle call).

Revision ID: 0007_billing
Revises: 0002_ledger, 0006_routes
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0007_billing"
down_revision = ("0002_ledger", "0006_routes")
branch_labels = None
depends_on = None


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script(
        r"""
        CREATE FUNCTION limits.place_hold(p_hold jsonb, p_now timestamptz, p_expires_at timestamptz)
        RETURNS jsonb LANGUAGE sql AS $$
            SELECT ledger.hold((p_hold->>'hold_id')::uuid, p_hold->>'tenant', (p_hold->>'amount')::bigint,
                               p_expires_at, p_hold->>'request_id', p_now)
        $$;
        CREATE FUNCTION limits.settle_hold(p_hold_id uuid, p_actual bigint, p_outcome text, p_now timestamptz)
        RETURNS jsonb LANGUAGE sql AS $$
            SELECT ledger.settle_hold(p_hold_id, p_actual,
                                      CASE WHEN p_actual > 0 THEN 'post'
                                           WHEN p_outcome = 'expired' THEN 'expire' ELSE 'void' END, p_now)
        $$;
        """
    )


def downgrade() -> None:
    run_script("DROP FUNCTION limits.place_hold(jsonb, timestamptz, timestamptz); "
               "DROP FUNCTION limits.settle_hold(uuid, bigint, text, timestamptz)")
