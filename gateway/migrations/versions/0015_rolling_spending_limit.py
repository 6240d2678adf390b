"""One window vocabulary: the account spending limit's `sliding` strategy is called `rolling`, as spend-limit
rules call their window type. Stored values move to `rolling`; the admin API still accepts `sliding` as input.
`ledger.limit_window_start` treats every strategy but `fixed` as the rolling window, so it needs no change.

Revision ID: 0015_rolling_spending_limit
Revises: 0014_component_prices
Create Date: 2026-12-03
"""

from __future__ import annotations

from gateway.db import run_script

revision = "0015_rolling_spending_limit"
down_revision = "0014_component_prices"
branch_labels = None
depends_on = None

CHECK = ("(spend_limit IS NULL) = (spend_limit_duration IS NULL) AND (spend_limit IS NULL) = (spend_limit_strategy "
         "IS NULL) AND spend_limit_duration IN ('daily', 'weekly', 'monthly') AND spend_limit_strategy IN {}")


def _rename(old: str, new: str) -> str:
    # a database created after the rename already has the new CHECK (0002 creates the table from its definition)
    return f"""
        ALTER TABLE ledger.accounts DROP CONSTRAINT ck_accounts_spend_limit;
        UPDATE ledger.accounts SET spend_limit_strategy = '{new}' WHERE spend_limit_strategy = '{old}';
        ALTER TABLE ledger.accounts ADD CONSTRAINT ck_accounts_spend_limit CHECK ({CHECK.format(f"('fixed', '{new}')")});
    """


def upgrade() -> None:
    run_script(_rename("sliding", "rolling"))


def downgrade() -> None:
    run_script(_rename("rolling", "sliding"))
