"""The reporting views' dollar amounts without trailing zeros.

`reporting.balances`, `reporting.statement` and `reporting.topups` divided a numeric(38,9) by 10^9, which Postgres
answers with 24 digits after the point (`0.000000123000000000000000`, `20.000000000000000000000000`). The same
values now come through `trim_scale`: `0.000000123`, `20`. The columns stay `numeric` (the views are replaced in
place, so the grants of `spendgate_reporting` and of the roles an operator made stay).

Revision ID: 0029_reporting_amounts_trimmed
Revises: 0028_late_usage_counts
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0029_reporting_amounts_trimmed"
down_revision = "0028_late_usage_counts"
branch_labels = None
depends_on = None

VIEWS = """
CREATE OR REPLACE VIEW reporting.balances AS
SELECT owner AS account,
       trim_scale((credits_posted - debits_posted)::numeric(38,9) / 1000000000) AS balance_usd,
       trim_scale(debits_pending::numeric(38,9) / 1000000000) AS pending_usd,
       trim_scale((credits_posted - debits_posted - debits_pending)::numeric(38,9) / 1000000000) AS available_usd
  FROM ledger.accounts WHERE code = 'credits';

CREATE OR REPLACE VIEW reporting.statement AS
SELECT a.owner AS account, t.created_at AS time, t.code,
       trim_scale((CASE WHEN t.credit_account_id = a.id THEN t.amount ELSE -t.amount END)::numeric(38,9) / 1000000000)
           AS amount_usd,
       t.request_id, t.id AS transfer_id
  FROM ledger.transfers t
  JOIN ledger.accounts a ON a.id IN (t.debit_account_id, t.credit_account_id)
 WHERE a.code = 'credits' AND t.kind IN ('single', 'post');

CREATE OR REPLACE VIEW reporting.topups AS
SELECT a.owner AS account, t.created_at AS time, t.code, trim_scale(t.amount::numeric(38,9) / 1000000000) AS amount_usd,
       t.id AS transfer_id
  FROM ledger.transfers t JOIN ledger.accounts a ON a.id = t.credit_account_id
 WHERE a.code = 'credits' AND t.code IN ('topup', 'auto_topup') AND t.kind = 'single';
"""

# what the downgrade restores: 0002's definitions
PREVIOUS_VIEWS = """
CREATE OR REPLACE VIEW reporting.balances AS
SELECT owner AS account,
       (credits_posted - debits_posted)::numeric(38,9) / 1000000000 AS balance_usd,
       debits_pending::numeric(38,9) / 1000000000 AS pending_usd,
       (credits_posted - debits_posted - debits_pending)::numeric(38,9) / 1000000000 AS available_usd
  FROM ledger.accounts WHERE code = 'credits';

CREATE OR REPLACE VIEW reporting.statement AS
SELECT a.owner AS account, t.created_at AS time, t.code,
       (CASE WHEN t.credit_account_id = a.id THEN t.amount ELSE -t.amount END)::numeric(38,9) / 1000000000 AS amount_usd,
       t.request_id, t.id AS transfer_id
  FROM ledger.transfers t
  JOIN ledger.accounts a ON a.id IN (t.debit_account_id, t.credit_account_id)
 WHERE a.code = 'credits' AND t.kind IN ('single', 'post');

CREATE OR REPLACE VIEW reporting.topups AS
SELECT a.owner AS account, t.created_at AS time, t.code, t.amount::numeric(38,9) / 1000000000 AS amount_usd, t.id AS transfer_id
  FROM ledger.transfers t JOIN ledger.accounts a ON a.id = t.credit_account_id
 WHERE a.code = 'credits' AND t.code IN ('topup', 'auto_topup') AND t.kind = 'single';
"""


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script(VIEWS)


def downgrade() -> None:
    run_script(PREVIOUS_VIEWS)
