"""Batched reservation and settlement: `limits.reserve_many` / `limits.settle_many`, one transaction (one round
trip, one commit) for every reservation or settlement an instance has waiting at that moment.

Why: every reservation of a hot bucket (one user, one unscoped rule) locks the same rows, and a row lock is held
until the commit record is flushed. One request per transaction means one WAL flush per request on those rows,
one after the other, with every other backend queued on the lock. Folding the requests that arrived meanwhile
into one transaction costs one flush and one pass over the rows for all of them (gateway/limits/reservations.py
sends at most a few such calls at a time and queues the rest).

Semantics are those of `limits.reserve` / `limits.settle` applied to the items one after the other, in order:
- reserve_many(items): items `{"id", "lines", "estimate", "now", "expires_at"}` without credit holds (those go
  through limits.reserve one by one: ledger rows of different tenants must not be locked in batch order). The
  reservation rows are inserted first, in id order (a replay answers `{"ok": true, "replay": true}`); then the
  union of every item's bucket rows is locked in the global order (rule id, key in byte order, window start),
  creating missing rows in that order; then each item is checked against the rows as the previous items left
  them (`spent + pending + estimate <= budget` for its blocking lines; rolling: the slices in its window) and
  either adds its estimate to every line's pending or is refused with nothing kept (its reservation row goes).
  One answer per item, as limits.reserve's.
- settle_many(items): items `{"id", "actual", "outcome", "now"}`. The reservation rows are locked first, in id
  order (limits.settle too takes its reservation's row before any bucket), each is resolved at most once (an
  expired one is recorded as `late`, as migration 0011 does), then the bucket rows of all of them are locked in
  the global order and updated once each; rolling slices once each; crossed `alert_at` fractions are found with
  running totals, item by item, so the alerts are those of the settlements done one after the other.

Both lock bucket rows in the same order as the one-by-one functions, so any mix of them cannot deadlock.

Revision ID: 0012_limits_batched
Revises: 0011_late_settlement
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0012_limits_batched"
down_revision = "0011_late_settlement"
branch_labels = None
depends_on = None

RESERVE_MANY = r"""
CREATE FUNCTION limits.reserve_many(p_items jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    k int := jsonb_array_length(p_items);
    v_ids uuid[];
    v_est bigint[];
    v_inserted uuid[];
    v_new boolean[];
    -- every line of the new items, in (item, position) order
    l_item int[];
    l_row int[];
    l_sum int[];
    l_budget bigint[];
    l_blocking boolean[];
    -- the bucket rows of those lines, in lock order
    w_rule uuid[];
    w_key text[];
    w_lock timestamptz[];
    w_spent bigint[];
    w_pending bigint[];
    w_add bigint[];
    -- rolling windows: one sum per (rule, key, counted since)
    s_rule uuid[];
    s_key text[];
    s_since timestamptz[];
    s_sum bigint[];
    nl int;
    nw int;
    v_results jsonb[];
    v_refused uuid[] := '{}';
    v_state jsonb[];
    v_exceeded int[];
    v_spent bigint;
    v_pending bigint;
    v_s bigint;
    v_p bigint;
    j int := 1;
    j0 int;
    rec record;
BEGIN
    IF k IS NULL OR k = 0 THEN
        RETURN '[]'::jsonb;
    END IF;
    SELECT array_agg((it->>'id')::uuid ORDER BY o), array_agg((it->>'estimate')::bigint ORDER BY o)
      INTO v_ids, v_est FROM jsonb_array_elements(p_items) WITH ORDINALITY AS x(it, o);
    -- the reservation rows first, in id order: replays are detected, and none of it happens under bucket locks
    WITH ins AS (
        INSERT INTO limits.reservations (id, lines, estimate, hold_id, created_at, expires_at)
        SELECT (it->>'id')::uuid, it->'lines', (it->>'estimate')::bigint, NULL,
               (it->>'now')::timestamptz, (it->>'expires_at')::timestamptz
          FROM jsonb_array_elements(p_items) AS x(it) ORDER BY 1
        ON CONFLICT (id) DO NOTHING RETURNING id)
    SELECT coalesce(array_agg(id), '{}') INTO v_inserted FROM ins;
    v_new := array_fill(false, ARRAY[k]);
    FOR i IN 1..k LOOP
        v_new[i] := v_ids[i] = ANY (v_inserted) AND array_position(v_ids, v_ids[i]) = i;
    END LOOP;
    nl := 0;
    FOR rec IN
        WITH lines AS (
            SELECT x.o AS item, y.lo AS pos, (l->>'rule_id')::uuid AS rule_id, l->>'key' AS key,
                   CASE WHEN l ? 'rolling_since' THEN '-infinity'::timestamptz
                        ELSE (l->>'window_start')::timestamptz END AS lock_at,
                   (l->>'rolling_since')::timestamptz AS since,
                   (l->>'budget')::bigint AS budget, (l->>'blocking')::boolean AS blocking
              FROM jsonb_array_elements(p_items) WITH ORDINALITY AS x(it, o),
                   jsonb_array_elements(x.it->'lines') WITH ORDINALITY AS y(l, lo)
             WHERE v_new[x.o]
        )
        SELECT lines.*,
               dense_rank() OVER (ORDER BY rule_id, key COLLATE "C", lock_at)::int AS row_ix,
               CASE WHEN since IS NOT NULL THEN
                   dense_rank() OVER (ORDER BY since IS NULL, rule_id, key COLLATE "C", since)::int END AS sum_ix
          FROM lines ORDER BY item, pos
    LOOP
        nl := nl + 1;
        l_item[nl] := rec.item;
        l_row[nl] := rec.row_ix;
        l_sum[nl] := rec.sum_ix;
        l_budget[nl] := rec.budget;
        l_blocking[nl] := rec.blocking;
        w_rule[rec.row_ix] := rec.rule_id;
        w_key[rec.row_ix] := rec.key;
        w_lock[rec.row_ix] := rec.lock_at;
        IF rec.sum_ix IS NOT NULL THEN
            s_rule[rec.sum_ix] := rec.rule_id;
            s_key[rec.sum_ix] := rec.key;
            s_since[rec.sum_ix] := rec.since;
        END IF;
    END LOOP;
    nw := coalesce(cardinality(w_rule), 0);
    w_spent := array_fill(0::bigint, ARRAY[nw]);
    w_pending := array_fill(0::bigint, ARRAY[nw]);
    w_add := array_fill(0::bigint, ARRAY[nw]);
    -- lock (or create) every row once, in the global order
    FOR r IN 1..nw LOOP
        SELECT spent, pending INTO v_s, v_p FROM limits.buckets
         WHERE rule_id = w_rule[r] AND key = w_key[r] AND window_start = w_lock[r] FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO limits.buckets AS b (rule_id, key, window_start)
            VALUES (w_rule[r], w_key[r], w_lock[r])
            ON CONFLICT (rule_id, key, window_start) DO UPDATE SET pending = b.pending
            RETURNING b.spent, b.pending INTO v_s, v_p;
        END IF;
        w_spent[r] := v_s;
        w_pending[r] := v_p;
    END LOOP;
    -- rolling: the slices still in each window, read under the head rows' locks (slices change only under them)
    IF s_rule IS NOT NULL THEN
        SELECT array_agg((SELECT coalesce(sum(b.spent), 0) FROM limits.buckets b
                           WHERE b.rule_id = s.rule_id AND b.key = s.key AND b.window_start >= s.since)::bigint
                         ORDER BY s.ix)
          INTO s_sum FROM unnest(s_rule, s_key, s_since) WITH ORDINALITY AS s(rule_id, key, since, ix);
    END IF;
    -- each item against the rows as the items before it left them
    v_results := array_fill(NULL::jsonb, ARRAY[k]);
    FOR i IN 1..k LOOP
        IF NOT v_new[i] THEN
            v_results[i] := jsonb_build_object('ok', true, 'replay', true);
            CONTINUE;
        END IF;
        j0 := j;
        v_state := '{}';
        v_exceeded := '{}';
        WHILE j <= nl AND l_item[j] = i LOOP
            v_pending := w_pending[l_row[j]];
            v_spent := CASE WHEN l_sum[j] IS NULL THEN w_spent[l_row[j]] ELSE s_sum[l_sum[j]] END;
            v_state := v_state || jsonb_build_object('spent', v_spent, 'pending', v_pending);
            IF l_blocking[j] AND v_spent + v_pending + v_est[i] > l_budget[j] THEN
                v_exceeded := v_exceeded || (j - j0);
            END IF;
            j := j + 1;
        END LOOP;
        IF cardinality(v_exceeded) > 0 THEN
            v_refused := v_refused || v_ids[i];
            v_results[i] := jsonb_build_object('ok', false, 'exceeded', to_jsonb(v_exceeded),
                                               'state', to_jsonb(v_state));
        ELSE
            FOR m IN j0..j - 1 LOOP
                w_pending[l_row[m]] := w_pending[l_row[m]] + v_est[i];
                w_add[l_row[m]] := w_add[l_row[m]] + v_est[i];
            END LOOP;
            v_results[i] := jsonb_build_object('ok', true, 'state', to_jsonb(v_state), 'hold', NULL::jsonb);
        END IF;
    END LOOP;
    IF cardinality(v_refused) > 0 THEN
        DELETE FROM limits.reservations WHERE id = ANY (v_refused);
    END IF;
    IF nw > 0 THEN
        UPDATE limits.buckets b SET pending = b.pending + u.amount
          FROM unnest(w_rule, w_key, w_lock, w_add) AS u(rule_id, key, lock_at, amount)
         WHERE u.amount <> 0 AND b.rule_id = u.rule_id AND b.key = u.key AND b.window_start = u.lock_at;
    END IF;
    RETURN to_jsonb(v_results);
END $$;
"""

SETTLE_MANY = r"""
CREATE FUNCTION limits.settle_many(p_items jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    k int := jsonb_array_length(p_items);
    v_ids uuid[];
    v_actual bigint[];
    v_outcome text[];
    v_now timestamptz[];
    v_ok boolean[];
    v_late boolean[];
    v_release bigint[];
    v_hold uuid[];
    v_lines jsonb[];
    rec record;
    -- every line of the settled items, in (item, position) order
    l_item int[];
    l_row int[];
    l_slice int[];
    l_sum int[];
    l_rule uuid[];
    l_key text[];
    l_budget bigint[];
    l_alert_window timestamptz[];
    l_alert_at jsonb[];
    -- fixed-window and rolling-head rows, in lock order, with their changes
    w_rule uuid[];
    w_key text[];
    w_lock timestamptz[];
    w_spent bigint[];
    w_dp bigint[];
    w_ds bigint[];
    -- rolling slices written
    sl_rule uuid[];
    sl_key text[];
    sl_start timestamptz[];
    sl_add bigint[];
    -- running totals of the rolling windows that alert: one per (rule, key, counted since)
    s_rule uuid[];
    s_key text[];
    s_since timestamptz[];
    s_sum bigint[];
    nl int;
    nw int;
    ns int;
    v_results jsonb[];
    v_total bigint;
    v_s bigint;
    v_alerts int;
    f numeric;
    n int;
    j int := 1;
    r int;
BEGIN
    IF k IS NULL OR k = 0 THEN
        RETURN '[]'::jsonb;
    END IF;
    SELECT array_agg((it->>'id')::uuid ORDER BY o), array_agg((it->>'actual')::bigint ORDER BY o),
           array_agg(it->>'outcome' ORDER BY o), array_agg((it->>'now')::timestamptz ORDER BY o)
      INTO v_ids, v_actual, v_outcome, v_now FROM jsonb_array_elements(p_items) WITH ORDINALITY AS x(it, o);
    -- the reservation rows first, in id order, as limits.settle takes its reservation's row before any bucket
    PERFORM 1 FROM limits.reservations WHERE id = ANY (v_ids) ORDER BY id FOR UPDATE;
    v_ok := array_fill(false, ARRAY[k]);
    v_late := array_fill(false, ARRAY[k]);
    v_release := array_fill(0::bigint, ARRAY[k]);
    v_hold := array_fill(NULL::uuid, ARRAY[k]);
    v_lines := array_fill(NULL::jsonb, ARRAY[k]);
    v_results := array_fill(NULL::jsonb, ARRAY[k]);
    FOR i IN 1..k LOOP
        UPDATE limits.reservations SET settled_at = v_now[i], actual = v_actual[i], outcome = v_outcome[i]
         WHERE id = v_ids[i] AND settled_at IS NULL
        RETURNING lines, estimate, hold_id INTO rec;
        IF FOUND THEN
            v_ok[i] := true;
            v_release[i] := rec.estimate;
        ELSIF v_outcome[i] <> 'expired' THEN
            -- after the sweeper expired it: the cost is still recorded, once; pending went back at expiry
            UPDATE limits.reservations SET actual = v_actual[i], outcome = 'late'
             WHERE id = v_ids[i] AND outcome = 'expired'
            RETURNING lines, estimate, hold_id INTO rec;
            IF FOUND THEN
                v_ok[i] := true;
                v_late[i] := true;
            END IF;
        END IF;
        IF v_ok[i] THEN
            v_lines[i] := rec.lines;
            v_hold[i] := rec.hold_id;
        ELSE
            v_results[i] := jsonb_build_object('ok', false, 'reason',
                CASE WHEN EXISTS (SELECT 1 FROM limits.reservations WHERE id = v_ids[i])
                     THEN 'already settled' ELSE 'unknown reservation' END);
        END IF;
    END LOOP;
    nl := 0;
    FOR rec IN
        WITH lines AS (
            SELECT x.i AS item, y.lo AS pos, (l->>'rule_id')::uuid AS rule_id, l->>'key' AS key,
                   CASE WHEN l ? 'rolling_since' THEN '-infinity'::timestamptz
                        ELSE (l->>'window_start')::timestamptz END AS lock_at,
                   (l->>'window_start')::timestamptz AS start, (l->>'rolling_since')::timestamptz AS since,
                   (l->>'budget')::bigint AS budget, (l->>'alert_window')::timestamptz AS alert_window,
                   l->'alert_at' AS alert_at
              FROM unnest(v_lines) WITH ORDINALITY AS x(ls, i),
                   jsonb_array_elements(x.ls) WITH ORDINALITY AS y(l, lo)
        )
        SELECT lines.*,
               dense_rank() OVER (ORDER BY rule_id, key COLLATE "C", lock_at)::int AS row_ix,
               CASE WHEN since IS NOT NULL THEN
                   dense_rank() OVER (ORDER BY since IS NULL, rule_id, key COLLATE "C", start)::int END AS slice_ix,
               CASE WHEN since IS NOT NULL AND alert_at IS NOT NULL THEN
                   dense_rank() OVER (ORDER BY since IS NULL OR alert_at IS NULL, rule_id, key COLLATE "C",
                                      since)::int END AS sum_ix
          FROM lines ORDER BY item, pos
    LOOP
        nl := nl + 1;
        l_item[nl] := rec.item;
        l_row[nl] := rec.row_ix;
        l_slice[nl] := rec.slice_ix;
        l_sum[nl] := rec.sum_ix;
        l_rule[nl] := rec.rule_id;
        l_key[nl] := rec.key;
        l_budget[nl] := rec.budget;
        l_alert_window[nl] := rec.alert_window;
        l_alert_at[nl] := rec.alert_at;
        w_rule[rec.row_ix] := rec.rule_id;
        w_key[rec.row_ix] := rec.key;
        w_lock[rec.row_ix] := rec.lock_at;
        IF rec.slice_ix IS NOT NULL THEN
            sl_rule[rec.slice_ix] := rec.rule_id;
            sl_key[rec.slice_ix] := rec.key;
            sl_start[rec.slice_ix] := rec.start;
        END IF;
        IF rec.sum_ix IS NOT NULL THEN
            s_rule[rec.sum_ix] := rec.rule_id;
            s_key[rec.sum_ix] := rec.key;
            s_since[rec.sum_ix] := rec.since;
        END IF;
    END LOOP;
    nw := coalesce(cardinality(w_rule), 0);
    ns := coalesce(cardinality(s_rule), 0);
    w_spent := array_fill(NULL::bigint, ARRAY[nw]);
    w_dp := array_fill(0::bigint, ARRAY[nw]);
    w_ds := array_fill(0::bigint, ARRAY[nw]);
    sl_add := array_fill(0::bigint, ARRAY[coalesce(cardinality(sl_rule), 0)]);
    -- lock every row once, in the global order (a missing row, as in limits.settle, is not written)
    FOR q IN 1..nw LOOP
        SELECT spent INTO v_s FROM limits.buckets
         WHERE rule_id = w_rule[q] AND key = w_key[q] AND window_start = w_lock[q] FOR UPDATE;
        IF FOUND THEN
            w_spent[q] := v_s;
        END IF;
    END LOOP;
    IF ns > 0 THEN
        SELECT array_agg((SELECT coalesce(sum(b.spent), 0) FROM limits.buckets b
                           WHERE b.rule_id = s.rule_id AND b.key = s.key AND b.window_start >= s.since)::bigint
                         ORDER BY s.ix)
          INTO s_sum FROM unnest(s_rule, s_key, s_since) WITH ORDINALITY AS s(rule_id, key, since, ix);
    END IF;
    -- the items one after the other, in memory: what each settlement changes, and the alerts it crosses
    FOR i IN 1..k LOOP
        CONTINUE WHEN NOT v_ok[i];
        v_alerts := 0;
        WHILE j <= nl AND l_item[j] = i LOOP
            r := l_row[j];
            w_dp[r] := w_dp[r] - CASE WHEN v_late[i] THEN 0 ELSE v_release[i] END;
            v_total := NULL;
            IF l_slice[j] IS NULL THEN
                IF w_spent[r] IS NOT NULL THEN
                    w_ds[r] := w_ds[r] + v_actual[i];
                    w_spent[r] := w_spent[r] + v_actual[i];
                    v_total := w_spent[r];
                END IF;
            ELSIF v_actual[i] > 0 THEN
                sl_add[l_slice[j]] := sl_add[l_slice[j]] + v_actual[i];
                FOR q IN 1..ns LOOP
                    IF s_rule[q] = l_rule[j] AND s_key[q] = l_key[j] AND s_since[q] <= sl_start[l_slice[j]] THEN
                        s_sum[q] := s_sum[q] + v_actual[i];
                    END IF;
                END LOOP;
                IF l_sum[j] IS NOT NULL THEN
                    v_total := s_sum[l_sum[j]];
                END IF;
            END IF;
            IF v_actual[i] > 0 AND l_alert_at[j] IS NOT NULL AND v_total IS NOT NULL THEN
                FOR q IN 0..jsonb_array_length(l_alert_at[j]) - 1 LOOP
                    f := (l_alert_at[j]->>q)::numeric;
                    IF v_total - v_actual[i] < f * l_budget[j] AND v_total >= f * l_budget[j] THEN
                        INSERT INTO limits.alerts (rule_id, key, window_start, fraction, spent, budget)
                        VALUES (l_rule[j], l_key[j], l_alert_window[j], f, v_total, l_budget[j])
                        ON CONFLICT DO NOTHING;
                        GET DIAGNOSTICS n = ROW_COUNT;
                        v_alerts := v_alerts + n;
                    END IF;
                END LOOP;
            END IF;
            j := j + 1;
        END LOOP;
        v_results[i] := jsonb_build_object('ok', true, 'late', v_late[i], 'alerts', v_alerts, 'hold', NULL::jsonb);
    END LOOP;
    IF nw > 0 THEN
        UPDATE limits.buckets b SET pending = b.pending + u.dp, spent = b.spent + u.ds
          FROM unnest(w_rule, w_key, w_lock, w_dp, w_ds) AS u(rule_id, key, lock_at, dp, ds)
         WHERE (u.dp <> 0 OR u.ds <> 0)
           AND b.rule_id = u.rule_id AND b.key = u.key AND b.window_start = u.lock_at;
    END IF;
    IF sl_rule IS NOT NULL THEN
        -- written only under the head rows' locks, held above
        INSERT INTO limits.buckets AS b (rule_id, key, window_start, spent)
        SELECT u.rule_id, u.key, u.start, u.amount
          FROM unnest(sl_rule, sl_key, sl_start, sl_add) AS u(rule_id, key, start, amount) WHERE u.amount > 0
        ON CONFLICT (rule_id, key, window_start) DO UPDATE SET spent = b.spent + EXCLUDED.spent;
    END IF;
    -- credit holds (the caller sends reservations with holds one by one; settled here too if one comes)
    FOR i IN 1..k LOOP
        IF v_ok[i] AND v_hold[i] IS NOT NULL THEN
            v_results[i] := v_results[i]
                || jsonb_build_object('hold', limits.settle_hold(v_hold[i], v_actual[i], v_outcome[i], v_now[i]));
        END IF;
    END LOOP;
    RETURN to_jsonb(v_results);
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
    run_script(RESERVE_MANY)
    run_script(SETTLE_MANY)


def downgrade() -> None:
    run_script("DROP FUNCTION limits.reserve_many(jsonb); DROP FUNCTION limits.settle_many(jsonb)")
