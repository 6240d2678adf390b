"""The reservation functions, one round trip each (installed by migration 0005_limits).

`limits.reserve` locks every matching bucket in the caller's fixed order (rule id, key), checks
`spent + pending + estimate <= budget` for every blocking bucket, and only when all pass (and the credit hold,
if any, is granted) adds the estimate to each bucket's pending and records the reservation. Nothing is written
when anything refuses: all or nothing, without exceptions on the hot path.

`limits.settle` resolves a reservation exactly once (`settled_at IS NULL` guard): pending goes back, the
actual cost is added to `spent` in the bucket (fixed) or in the slice (rolling) where it was reserved, crossed
`alert_at` fractions become alert rows (the webhook outbox; one per bucket, fraction and calendar window
`alert_window`, rolling rules included), and the credit hold, if any, is settled with the
actual cost in the same transaction. A settlement that arrives after the sweeper expired its reservation is still
recorded, once (outcome `late`, migration 0011): a call that happened is never left unbilled.

Batched variants with the same semantics, `limits.reserve_many` / `limits.settle_many` (many reservations or
settlements in one transaction, for hot buckets), are defined in migration 0012_limits_batched and used by
gateway/limits/reservations.py for reservations without a credit hold.
"""

RESERVE = r"""
CREATE FUNCTION limits.reserve(p_id uuid, p_lines jsonb, p_estimate bigint, p_now timestamptz,
                               p_expires_at timestamptz, p_hold jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    line jsonb;
    i int := 0;
    v_lock timestamptz;
    v_spent bigint;
    v_pending bigint;
    v_state jsonb := '[]'::jsonb;
    v_exceeded jsonb := '[]'::jsonb;
    v_hold jsonb;
BEGIN
    IF EXISTS (SELECT 1 FROM limits.reservations WHERE id = p_id) THEN
        RETURN jsonb_build_object('ok', true, 'replay', true);
    END IF;
    FOR line IN SELECT value FROM jsonb_array_elements(p_lines) LOOP
        v_lock := CASE WHEN line ? 'rolling_since' THEN '-infinity'::timestamptz
                       ELSE (line->>'window_start')::timestamptz END;
        -- create-or-lock the bucket's row in one statement
        INSERT INTO limits.buckets AS b (rule_id, key, window_start)
        VALUES ((line->>'rule_id')::uuid, line->>'key', v_lock)
        ON CONFLICT (rule_id, key, window_start) DO UPDATE SET pending = b.pending
        RETURNING b.spent, b.pending INTO v_spent, v_pending;
        IF line ? 'rolling_since' THEN
            SELECT coalesce(sum(spent), 0) INTO v_spent FROM limits.buckets
             WHERE rule_id = (line->>'rule_id')::uuid AND key = line->>'key'
               AND window_start >= (line->>'rolling_since')::timestamptz;
        END IF;
        v_state := v_state || jsonb_build_array(jsonb_build_object('spent', v_spent, 'pending', v_pending));
        IF (line->>'blocking')::boolean AND v_spent + v_pending + p_estimate > (line->>'budget')::bigint THEN
            v_exceeded := v_exceeded || jsonb_build_array(i);
        END IF;
        i := i + 1;
    END LOOP;
    IF jsonb_array_length(v_exceeded) > 0 THEN
        RETURN jsonb_build_object('ok', false, 'exceeded', v_exceeded, 'state', v_state);
    END IF;
    IF p_hold IS NOT NULL THEN
        v_hold := limits.place_hold(p_hold, p_now, p_expires_at);
        IF NOT (v_hold->>'ok')::boolean THEN
            RETURN jsonb_build_object('ok', false, 'credit', v_hold, 'state', v_state);
        END IF;
    END IF;
    FOR line IN SELECT value FROM jsonb_array_elements(p_lines) LOOP
        UPDATE limits.buckets SET pending = pending + p_estimate
         WHERE rule_id = (line->>'rule_id')::uuid AND key = line->>'key'
           AND window_start = CASE WHEN line ? 'rolling_since' THEN '-infinity'::timestamptz
                                   ELSE (line->>'window_start')::timestamptz END;
    END LOOP;
    INSERT INTO limits.reservations (id, lines, estimate, hold_id, created_at, expires_at)
    VALUES (p_id, p_lines, p_estimate, (p_hold->>'hold_id')::uuid, p_now, p_expires_at);
    RETURN jsonb_build_object('ok', true, 'state', v_state, 'hold', v_hold);
END $$;
"""

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
