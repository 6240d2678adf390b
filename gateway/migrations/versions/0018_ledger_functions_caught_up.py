"""The ledger's functions as the code has them. Two were changed in the code after migration 0002 installed them,
with no migration to carry the change, so each database kept the version it was created with:

- `ledger.hold`: a refused hold on an account without a spending limit is always insufficient credit (commit
  3a1b3b0; before, a re-read after the refusal could answer `spending_limit` for an account that has none).
- `ledger.limit_window_start`: its comment says `rolling` (commit 73cda4f, with 0015's rename); the function
  itself is unchanged.

0002 used to import these functions from the code, so a database created from 73cda4f on already has both, and
replacing them with the same text changes nothing there. 0002 now installs them as they were when it landed; this
migration brings every database, whenever it was created, to the same functions.

Revision ID: 0018_ledger_functions_caught_up
Revises: 0017_one_reservation_path
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0018_ledger_functions_caught_up"
down_revision = "0017_one_reservation_path"
branch_labels = None
depends_on = None

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION ledger.limit_window_start(p_duration text, p_strategy text, p_now timestamptz)
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_strategy = 'fixed' THEN
               date_trunc(CASE p_duration WHEN 'daily' THEN 'day' WHEN 'weekly' THEN 'week' ELSE 'month' END,
                          p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
           ELSE
               -- rolling: whole hourly slices; the slice holding (now - duration) counts in full (never under-counts)
               date_trunc('hour', (p_now - CASE p_duration WHEN 'daily' THEN interval '1 day'
                                                WHEN 'weekly' THEN interval '7 days' ELSE interval '30 days' END)
                                  AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
           END
$$;

CREATE OR REPLACE FUNCTION ledger.hold(p_id uuid, p_tenant text, p_amount bigint, p_expires_at timestamptz,
                            p_request_id text, p_now timestamptz)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    t ledger.transfers%ROWTYPE;
    c record;
    a record;
    v_spent bigint := 0;
    v_usage bigint;
BEGIN
    IF p_amount < 0 THEN
        RETURN jsonb_build_object('ok', false, 'reason', 'invalid_amount');
    END IF;
    SELECT * INTO t FROM ledger.transfers WHERE id = p_id;
    IF FOUND THEN
        IF t.kind = 'pending' AND t.amount = p_amount AND t.request_id IS NOT DISTINCT FROM p_request_id
           AND t.debit_account_id = (SELECT id FROM ledger.accounts
                                      WHERE code = 'credits' AND owner = p_tenant AND shard = 0) THEN
            RETURN jsonb_build_object('ok', true, 'replay', true);
        END IF;
        RETURN jsonb_build_object('ok', false, 'reason', 'id_conflict');
    END IF;
    SELECT id, spend_limit, spend_limit_duration, spend_limit_strategy INTO c
      FROM ledger.accounts WHERE code = 'credits' AND owner = p_tenant AND shard = 0;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('ok', false, 'reason', 'unknown_account');
    END IF;
    IF c.spend_limit IS NOT NULL THEN
        -- usage slices only change under this row's lock: take it first, then the sum is exact
        PERFORM 1 FROM ledger.accounts WHERE id = c.id FOR UPDATE;
        SELECT coalesce(sum(spent), 0) INTO v_spent FROM ledger.usage_hourly
         WHERE tenant = p_tenant
           AND hour >= ledger.limit_window_start(c.spend_limit_duration, c.spend_limit_strategy, p_now);
    END IF;
    UPDATE ledger.accounts SET debits_pending = debits_pending + p_amount
     WHERE id = c.id
       AND debits_posted + debits_pending + p_amount <= credits_posted
       AND (spend_limit IS NULL OR v_spent + debits_pending + p_amount <= spend_limit)
    RETURNING credits_posted - debits_posted - debits_pending AS available,
              auto_topup_threshold, auto_topup_amount INTO a;
    IF NOT FOUND THEN
        SELECT credits_posted - debits_posted - debits_pending AS available, debits_pending AS pending,
               spend_limit INTO a FROM ledger.accounts WHERE id = c.id;
        -- without a limit only the credit guard can refuse; with one, the row is locked and the read is exact
        IF c.spend_limit IS NULL OR a.available < p_amount THEN
            RETURN jsonb_build_object('ok', false, 'reason', 'insufficient_credit', 'available', a.available);
        END IF;
        RETURN jsonb_build_object('ok', false, 'reason', 'spending_limit', 'available', a.available,
                                  'limit', a.spend_limit, 'spent', v_spent, 'pending', a.pending,
                                  'duration', c.spend_limit_duration, 'strategy', c.spend_limit_strategy);
    END IF;
    UPDATE ledger.accounts SET credits_pending = credits_pending + p_amount
     WHERE code = 'usage' AND owner = '' AND shard = abs(hashtext(p_id::text)) % 16
    RETURNING id INTO v_usage;
    INSERT INTO ledger.transfers (id, debit_account_id, credit_account_id, amount, kind, code, expires_at,
                                  request_id, created_at)
    VALUES (p_id, c.id, v_usage, p_amount, 'pending', 'usage', p_expires_at, p_request_id, p_now);
    INSERT INTO ledger.open_holds (hold_id, tenant, debit_account_id, credit_account_id, amount, request_id, expires_at)
    VALUES (p_id, p_tenant, c.id, v_usage, p_amount, p_request_id, p_expires_at);
    PERFORM ledger.auto_topup_on_crossing(p_tenant, a.available + p_amount, a.available,
                                          a.auto_topup_threshold, a.auto_topup_amount, p_now);
    RETURN jsonb_build_object('ok', true, 'available', a.available);
END $$;
"""


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script(FUNCTIONS)


def downgrade() -> None:
    pass  # the earlier hold could misname a refusal; keeping the newer functions is harmless
