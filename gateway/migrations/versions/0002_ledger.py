"""Ledger: accounts, transfers, holds, usage slices, auto top-up outbox, the one-round-trip functions,
reporting views over balances, statements and top-ups, and the read-only reporting role.

Revision ID: 0002_ledger
Revises: 0001_base
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

from gateway.db import run_script
from gateway.ledger.schema import USAGE_SHARDS, accounts, auto_topups, open_holds, transfers, usage_hourly
from gateway.ledger.sql import FUNCTIONS

revision = "0002_ledger"
down_revision = "0001_base"
branch_labels = None
depends_on = None

REPORTING = """
CREATE SCHEMA IF NOT EXISTS reporting;

CREATE VIEW reporting.balances AS
SELECT owner AS account,
       (credits_posted - debits_posted)::numeric(38,9) / 1000000000 AS balance_usd,
       debits_pending::numeric(38,9) / 1000000000 AS pending_usd,
       (credits_posted - debits_posted - debits_pending)::numeric(38,9) / 1000000000 AS available_usd
  FROM ledger.accounts WHERE code = 'credits';

CREATE VIEW reporting.statement AS
SELECT a.owner AS account, t.created_at AS time, t.code,
       (CASE WHEN t.credit_account_id = a.id THEN t.amount ELSE -t.amount END)::numeric(38,9) / 1000000000 AS amount_usd,
       t.request_id, t.id AS transfer_id
  FROM ledger.transfers t
  JOIN ledger.accounts a ON a.id IN (t.debit_account_id, t.credit_account_id)
 WHERE a.code = 'credits' AND t.kind IN ('single', 'post');

CREATE VIEW reporting.topups AS
SELECT a.owner AS account, t.created_at AS time, t.code, t.amount::numeric(38,9) / 1000000000 AS amount_usd, t.id AS transfer_id
  FROM ledger.transfers t JOIN ledger.accounts a ON a.id = t.credit_account_id
 WHERE a.code = 'credits' AND t.code IN ('topup', 'auto_topup') AND t.kind = 'single';

DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'spendgate_reporting') THEN
        CREATE ROLE spendgate_reporting NOLOGIN;
    END IF;
END $$;
REVOKE ALL ON SCHEMA reporting FROM PUBLIC;
GRANT USAGE ON SCHEMA reporting TO spendgate_reporting;
GRANT SELECT ON ALL TABLES IN SCHEMA reporting TO spendgate_reporting;
ALTER DEFAULT PRIVILEGES IN SCHEMA reporting GRANT SELECT ON TABLES TO spendgate_reporting;
"""


def upgrade() -> None:
    run_script("CREATE SCHEMA IF NOT EXISTS ledger")
    for table in (accounts, transfers, open_holds, usage_hourly, auto_topups):
        table.create(op.get_bind())
    shards = ", ".join(f"('usage', '', {i})" for i in range(USAGE_SHARDS))
    run_script(f"INSERT INTO ledger.accounts (code, owner, shard) VALUES ('funding', '', 0), {shards}")
    run_script(FUNCTIONS)
    run_script(REPORTING)


def downgrade() -> None:
    run_script("DROP VIEW reporting.topups, reporting.statement, reporting.balances; DROP SCHEMA ledger CASCADE")
