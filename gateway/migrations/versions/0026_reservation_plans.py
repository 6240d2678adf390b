"""The reservation functions plan for what they are: a batch of at most a few hundred rows against tables that grow
without bound. `limits.reserve` and `limits.settle` (and what they call) run with sequential scans, bitmap scans
and hash joins discouraged, so every lookup of a reservation, transfer, open hold, account or bucket is a nested
loop over an index, whatever the statistics say.

Why: plpgsql caches each statement's plan per connection, and a plan chosen while a table was small, or before
autovacuum analysed it, hashed the whole table: `ledger.transfers` read in full to find a batch's 16 hold ids, the
open reservations' partial index read in full to find 16 ids, the buckets and accounts scanned for a handful of
rows. The cost grew with the tables, request after request, until the next ANALYZE. Measured on a fresh database,
16-request batches with 5 spend lines and a credit hold each (Postgres backend CPU per request, same run): 1.06 ms
with the planner's choices, 0.60 ms after an ANALYZE, 0.46 ms with these settings (and no ANALYZE needed).

The settings are the functions' own (`ALTER FUNCTION … SET`): they apply while the function runs, to everything it
calls, and nowhere else. A later `CREATE OR REPLACE FUNCTION` of either drops them unless it says them again
(tests/limits/test_reservation_plans.py fails if they are gone).

Revision ID: 0026_reservation_plans
Revises: 0025_narrow_rollups
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0026_reservation_plans"
down_revision = "0025_narrow_rollups"
branch_labels = None
depends_on = None

FUNCTIONS = (
    "limits.reserve(limits.bucket_line[], limits.reservation_request[])",
    "limits.settle(limits.settlement_request[])",
)
SETTINGS = ("enable_seqscan", "enable_bitmapscan", "enable_hashjoin")


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script("\n".join(f"ALTER FUNCTION {function} SET {setting} = off;"
                         for function in FUNCTIONS for setting in SETTINGS))


def downgrade() -> None:
    run_script("\n".join(f"ALTER FUNCTION {function} RESET {setting};"
                         for function in FUNCTIONS for setting in SETTINGS))
