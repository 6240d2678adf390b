"""`limits.reserve` and `limits.settle` keep one plan per statement (`plan_cache_mode = force_generic_plan`, their
own setting, as in 0026).

plpgsql plans a statement with the call's own values for its first five executions, then keeps a generic plan
only if it does not look costlier than those; for these functions' array parameters it never did, so every call
planned most of its statements again: a quarter of the backend's CPU in a profile of one-request batches
(`perf record` on the backend: GetCachedPlan 31%, the planner 25%). With sequential scans, bitmap scans and hash
joins off (0026) the generic plans are the index nested loops the custom ones were. Backend CPU per request,
same run: one-request batches with 5 spend lines and a credit hold 5.9 ms -> 3.6 ms; 16-request batches
0.75 -> 0.57 ms.

A later `CREATE OR REPLACE FUNCTION` of either drops the setting unless it says it again
(tests/limits/test_reservation_plans.py fails if it is gone).

Revision ID: 0027_reservation_generic_plans
Revises: 0026_reservation_plans
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0027_reservation_generic_plans"
down_revision = "0026_reservation_plans"
branch_labels = None
depends_on = None

FUNCTIONS = (
    "limits.reserve(limits.bucket_line[], limits.reservation_request[])",
    "limits.settle(limits.settlement_request[])",
)


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script("\n".join(f"ALTER FUNCTION {function} SET plan_cache_mode = force_generic_plan;"
                         for function in FUNCTIONS))


def downgrade() -> None:
    run_script("\n".join(f"ALTER FUNCTION {function} RESET plan_cache_mode;" for function in FUNCTIONS))
