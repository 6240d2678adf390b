"""One window vocabulary: the account spending limit's `sliding` strategy is called `rolling`, as spend-limit
rules call their window type. Stored values move to `rolling`; the admin API still accepts `sliding` as input.
`ledger.limit_window_start` treats every strategy but `fixed` as the rolling window, so it needs no change.

Revision ID: 0015_rolling_spending_limit
Revises: 0014_component_prices
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0015_rolling_spending_limit"
down_revision = "0014_component_prices"
branch_labels = None
depends_on = None

CHECK = ("(spend_limit IS NULL) = (spend_limit_duration IS NULL) AND (spend_limit IS NULL) = (spend_limit_strategy "
         "IS NULL) AND spend_limit_duration IN ('daily', 'weekly', 'monthly') AND spend_limit_strategy IN {}")


def _rename(old: str, new: str) -> str:
    # dropped and added again: until the migrations were frozen, 0002 built the table from the code's definition of
    # the day, so databases created from commit 73cda4f on already have the new CHECK (0002 itself creates the old)
    return f"""
        ALTER TABLE ledger.accounts DROP CONSTRAINT ck_accounts_spend_limit;
        UPDATE ledger.accounts SET spend_limit_strategy = '{new}' WHERE spend_limit_strategy = '{old}';
        ALTER TABLE ledger.accounts ADD CONSTRAINT ck_accounts_spend_limit CHECK ({CHECK.format(f"('fixed', '{new}')")});
    """


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script(_rename("sliding", "rolling"))


def downgrade() -> None:
    run_script(_rename("rolling", "sliding"))
