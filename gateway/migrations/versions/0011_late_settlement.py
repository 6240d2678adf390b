"""limits.settle records a settlement that arrives after its reservation expired (outcome 'late').

Revision ID: 0011_late_settlement
Revises: 0010_gateway_tokens
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0011_late_settlement"
down_revision = "0010_gateway_tokens"
branch_labels = None
depends_on = None

# Frozen: the function exactly as this migration installed it when it landed (commit 19fd88b),
# spelled out rather than imported, so that no later change to the code changes what it installs.
SETTLE = r"""
CREATE OR REPLACE FUNCTION limits.settle(p_id uuid, p_actual bigint, p_outcome text, p_now timestamptz)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    r limits.reservations%ROWTYPE;
    line jsonb;
    v_rule uuid;
    v_spent bigint;
    v_total bigint;
    v_budget bigint;
    f jsonb;
    v_alerts int := 0;
    v_hold jsonb;
    v_late boolean := false;
    v_release bigint;
    n int;
BEGIN
    UPDATE limits.reservations SET settled_at = p_now, actual = p_actual, outcome = p_outcome
     WHERE id = p_id AND settled_at IS NULL
    RETURNING * INTO r;
    IF NOT FOUND AND p_outcome <> 'expired' THEN
        -- The call ended after the sweeper expired its reservation (a stream longer than the TTL, or a database
        -- outage longer than it while the settlement waited): the call happened, so its cost is still recorded,
        -- once — the outcome moves from 'expired' to 'late'. Pending was already given back at expiry.
        UPDATE limits.reservations SET actual = p_actual, outcome = 'late'
         WHERE id = p_id AND outcome = 'expired'
        RETURNING * INTO r;
        v_late := FOUND;
    END IF;
    IF r.id IS NULL THEN
        RETURN jsonb_build_object('ok', false, 'reason',
            CASE WHEN EXISTS (SELECT 1 FROM limits.reservations WHERE id = p_id)
                 THEN 'already settled' ELSE 'unknown reservation' END);
    END IF;
    v_release := CASE WHEN v_late THEN 0 ELSE r.estimate END;
    FOR line IN SELECT value FROM jsonb_array_elements(r.lines) LOOP
        v_rule := (line->>'rule_id')::uuid;
        v_budget := (line->>'budget')::bigint;
        IF line ? 'rolling_since' THEN
            UPDATE limits.buckets SET pending = pending - v_release
             WHERE rule_id = v_rule AND key = line->>'key' AND window_start = '-infinity';
            INSERT INTO limits.buckets AS b (rule_id, key, window_start, spent)
            VALUES (v_rule, line->>'key', (line->>'window_start')::timestamptz, p_actual)
            ON CONFLICT (rule_id, key, window_start) DO UPDATE SET spent = b.spent + p_actual;
            SELECT coalesce(sum(spent), 0) INTO v_total FROM limits.buckets
             WHERE rule_id = v_rule AND key = line->>'key'
               AND window_start >= (line->>'rolling_since')::timestamptz;
        ELSE
            UPDATE limits.buckets SET pending = pending - v_release, spent = spent + p_actual
             WHERE rule_id = v_rule AND key = line->>'key'
               AND window_start = (line->>'window_start')::timestamptz
            RETURNING spent INTO v_total;
        END IF;
        IF p_actual > 0 AND line ? 'alert_at' THEN
            FOR f IN SELECT value FROM jsonb_array_elements(line->'alert_at') LOOP
                IF v_total - p_actual < (f #>> '{}')::numeric * v_budget
                   AND v_total >= (f #>> '{}')::numeric * v_budget THEN
                    INSERT INTO limits.alerts (rule_id, key, window_start, fraction, spent, budget)
                    VALUES (v_rule, line->>'key', (line->>'alert_window')::timestamptz,
                            (f #>> '{}')::numeric, v_total, v_budget)
                    ON CONFLICT DO NOTHING;
                    GET DIAGNOSTICS n = ROW_COUNT;
                    v_alerts := v_alerts + n;
                END IF;
            END LOOP;
        END IF;
    END LOOP;
    IF r.hold_id IS NOT NULL THEN
        -- a late settlement posts against an expired hold: the ledger bills it as an unheld debit
        v_hold := limits.settle_hold(r.hold_id, p_actual, p_outcome, p_now);
    END IF;
    RETURN jsonb_build_object('ok', true, 'late', v_late, 'alerts', v_alerts, 'hold', v_hold);
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
    run_script(SETTLE)  # CREATE OR REPLACE


def downgrade() -> None:
    pass  # the earlier function refused late settlements; keeping the newer one is harmless
