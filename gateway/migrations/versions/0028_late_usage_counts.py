"""A late settlement counts against the account spending limit.

A call that ends after the sweeper expired its credit hold (a stream longer than the hold's time to live, or a
database outage longer than it while the settlement waited) is still billed: `ledger.settle_hold` bills its cost as
an unheld debit. It did not add it to the tenant's hourly usage slices, which the spending limit counts, while
setting a limit for the first time rebuilds those slices from the transfers, late ones included: the same usage
counted or not depending on when the limit was set. Now it is counted when it is billed, once (a replayed late
settlement is billed once and counted once), while the tenant has a limit (slices are kept only then).

Revision ID: 0028_late_usage_counts
Revises: 0027_reservation_generic_plans
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0028_late_usage_counts"
down_revision = "0027_reservation_generic_plans"
branch_labels = None
depends_on = None

SETTLE_HOLD = r"""
CREATE OR REPLACE FUNCTION ledger.settle_hold(p_hold_id uuid, p_actual bigint, p_kind text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $$
DECLARE
    h ledger.open_holds%ROWTYPE;
    r ledger.transfers%ROWTYPE;
    a record;
    v_post bigint;
    v_excess jsonb;
    v_kind text := CASE WHEN p_kind = 'post' AND p_actual > 0 THEN 'post'
                        WHEN p_kind = 'expire' THEN 'expire' ELSE 'void' END;
BEGIN
    IF p_actual < 0 THEN
        RETURN jsonb_build_object('ok', false, 'reason', 'invalid_amount');
    END IF;
    DELETE FROM ledger.open_holds WHERE hold_id = p_hold_id RETURNING * INTO h;
    IF NOT FOUND THEN
        SELECT * INTO r FROM ledger.transfers WHERE pending_id = p_hold_id;
        IF NOT FOUND THEN
            RETURN jsonb_build_object('ok', false, 'reason', 'unknown_hold');
        END IF;
        IF r.kind = v_kind AND (v_kind <> 'post' OR r.amount = least(p_actual, (SELECT amount FROM ledger.transfers
                                                                                  WHERE id = p_hold_id))) THEN
            RETURN jsonb_build_object('ok', true, 'replay', true, 'kind', r.kind);
        END IF;
        IF r.kind = 'expire' AND v_kind = 'post' THEN
            -- the request finished after its hold expired: the cost is still billed, never dropped
            SELECT t.*, o.owner AS tenant INTO a FROM ledger.transfers t
              JOIN ledger.accounts o ON o.id = t.debit_account_id WHERE t.id = p_hold_id;
            v_excess := ledger.bill_unheld(md5(p_hold_id::text || ':late')::uuid, a.tenant, a.credit_account_id,
                                           p_actual, a.request_id, p_now);
            -- it counts against the account spending limit like any usage, once (a replayed late settlement is
            -- billed once, and counted once)
            IF p_actual > 0 AND NOT coalesce((v_excess ->> 'replay')::boolean, false)
               AND EXISTS (SELECT 1 FROM ledger.accounts WHERE code = 'credits' AND owner = a.tenant AND shard = 0
                             AND spend_limit IS NOT NULL) THEN
                INSERT INTO ledger.usage_hourly AS u (tenant, hour, spent)
                VALUES (a.tenant, date_trunc('hour', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', p_actual)
                ON CONFLICT (tenant, hour) DO UPDATE SET spent = u.spent + p_actual;
            END IF;
            RETURN jsonb_build_object('ok', true, 'kind', 'late', 'posted', 0, 'excess', v_excess);
        END IF;
        RETURN jsonb_build_object('ok', false, 'reason', 'already_resolved', 'kind', r.kind);
    END IF;
    v_post := CASE WHEN v_kind = 'post' THEN least(p_actual, h.amount) ELSE 0 END;
    INSERT INTO ledger.transfers (id, debit_account_id, credit_account_id, amount, kind, code, pending_id,
                                  request_id, created_at)
    VALUES (md5(p_hold_id::text || ':' || v_kind)::uuid, h.debit_account_id, h.credit_account_id,
            CASE WHEN v_kind = 'post' THEN v_post ELSE h.amount END, v_kind, 'usage', p_hold_id,
            h.request_id, p_now);
    UPDATE ledger.accounts SET debits_pending = debits_pending - h.amount, debits_posted = debits_posted + v_post
     WHERE id = h.debit_account_id
    RETURNING credits_posted - debits_posted - debits_pending AS available, auto_topup_threshold,
              auto_topup_amount, spend_limit INTO a;
    UPDATE ledger.accounts SET credits_pending = credits_pending - h.amount, credits_posted = credits_posted + v_post
     WHERE id = h.credit_account_id;
    IF p_actual > h.amount AND v_kind = 'post' THEN
        v_excess := ledger.bill_unheld(md5(p_hold_id::text || ':excess')::uuid, h.tenant, h.credit_account_id,
                                       p_actual - h.amount, h.request_id, p_now);
    END IF;
    IF v_kind = 'post' AND a.spend_limit IS NOT NULL THEN
        INSERT INTO ledger.usage_hourly AS u (tenant, hour, spent)
        VALUES (h.tenant, date_trunc('hour', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', p_actual)
        ON CONFLICT (tenant, hour) DO UPDATE SET spent = u.spent + p_actual;
    END IF;
    RETURN jsonb_build_object('ok', true, 'kind', v_kind, 'posted', v_post, 'released', h.amount - v_post,
                              'excess', v_excess, 'available', a.available);
END $$
"""

PREVIOUS_SETTLE_HOLD = r"""
CREATE OR REPLACE FUNCTION ledger.settle_hold(p_hold_id uuid, p_actual bigint, p_kind text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $$
DECLARE
    h ledger.open_holds%ROWTYPE;
    r ledger.transfers%ROWTYPE;
    a record;
    v_post bigint;
    v_excess jsonb;
    v_kind text := CASE WHEN p_kind = 'post' AND p_actual > 0 THEN 'post'
                        WHEN p_kind = 'expire' THEN 'expire' ELSE 'void' END;
BEGIN
    IF p_actual < 0 THEN
        RETURN jsonb_build_object('ok', false, 'reason', 'invalid_amount');
    END IF;
    DELETE FROM ledger.open_holds WHERE hold_id = p_hold_id RETURNING * INTO h;
    IF NOT FOUND THEN
        SELECT * INTO r FROM ledger.transfers WHERE pending_id = p_hold_id;
        IF NOT FOUND THEN
            RETURN jsonb_build_object('ok', false, 'reason', 'unknown_hold');
        END IF;
        IF r.kind = v_kind AND (v_kind <> 'post' OR r.amount = least(p_actual, (SELECT amount FROM ledger.transfers
                                                                                  WHERE id = p_hold_id))) THEN
            RETURN jsonb_build_object('ok', true, 'replay', true, 'kind', r.kind);
        END IF;
        IF r.kind = 'expire' AND v_kind = 'post' THEN
            -- the request finished after its hold expired: the cost is still billed, never dropped
            SELECT t.*, o.owner AS tenant INTO a FROM ledger.transfers t
              JOIN ledger.accounts o ON o.id = t.debit_account_id WHERE t.id = p_hold_id;
            v_excess := ledger.bill_unheld(md5(p_hold_id::text || ':late')::uuid, a.tenant, a.credit_account_id,
                                           p_actual, a.request_id, p_now);
            RETURN jsonb_build_object('ok', true, 'kind', 'late', 'posted', 0, 'excess', v_excess);
        END IF;
        RETURN jsonb_build_object('ok', false, 'reason', 'already_resolved', 'kind', r.kind);
    END IF;
    v_post := CASE WHEN v_kind = 'post' THEN least(p_actual, h.amount) ELSE 0 END;
    INSERT INTO ledger.transfers (id, debit_account_id, credit_account_id, amount, kind, code, pending_id,
                                  request_id, created_at)
    VALUES (md5(p_hold_id::text || ':' || v_kind)::uuid, h.debit_account_id, h.credit_account_id,
            CASE WHEN v_kind = 'post' THEN v_post ELSE h.amount END, v_kind, 'usage', p_hold_id,
            h.request_id, p_now);
    UPDATE ledger.accounts SET debits_pending = debits_pending - h.amount, debits_posted = debits_posted + v_post
     WHERE id = h.debit_account_id
    RETURNING credits_posted - debits_posted - debits_pending AS available, auto_topup_threshold,
              auto_topup_amount, spend_limit INTO a;
    UPDATE ledger.accounts SET credits_pending = credits_pending - h.amount, credits_posted = credits_posted + v_post
     WHERE id = h.credit_account_id;
    IF p_actual > h.amount AND v_kind = 'post' THEN
        v_excess := ledger.bill_unheld(md5(p_hold_id::text || ':excess')::uuid, h.tenant, h.credit_account_id,
                                       p_actual - h.amount, h.request_id, p_now);
    END IF;
    IF v_kind = 'post' AND a.spend_limit IS NOT NULL THEN
        INSERT INTO ledger.usage_hourly AS u (tenant, hour, spent)
        VALUES (h.tenant, date_trunc('hour', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', p_actual)
        ON CONFLICT (tenant, hour) DO UPDATE SET spent = u.spent + p_actual;
    END IF;
    RETURN jsonb_build_object('ok', true, 'kind', v_kind, 'posted', v_post, 'released', h.amount - v_post,
                              'excess', v_excess, 'available', a.available);
END $$
"""


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script(SETTLE_HOLD)


def downgrade() -> None:
    run_script(PREVIOUS_SETTLE_HOLD)
