"""Credit holds join the batch: `limits.reserve` and `limits.settle` take any number of credit holds in one batch.

0017 refused a batch with two credit holds, so the gateway sent every unified-billing reservation and settlement
alone: one transaction, and one WAL flush, per request, all of them queued on the tenant's credits row. Now one
transaction serves a whole batch, holds included, and no mix of batches can deadlock, because every function takes
its rows in one global order:

    reservation rows (id order) -> open holds (hold id order) -> credits accounts (account id order)
        -> usage shards (account id order) -> bucket rows (rule id, key, window start)

- `limits.reserve` locks, after inserting the reservation rows and before any bucket, the credits accounts of the
  batch's new holds, then the one usage shard all of the batch's holds are booked to (chosen from the smallest
  hold id, as one hold alone always was). Each hold is then placed by `ledger.hold_at` with that shard: the same
  checks, in request order, as `ledger.hold` (which is now `ledger.hold_at` with the shard from its id).
- `limits.settle` locks, after the reservation rows, the open holds of the settled reservations, then their
  tenants' credits accounts and usage shards (read from the holds' transfers, which also name them when the
  sweeper expired the hold), then the buckets; the holds are settled last, in the settlements' order, by
  `ledger.settle_hold` as before.
- A tenant's other ledger rows (receivable account, usage slices of the spending limit, the auto top-up outbox)
  change only under its credits row's lock, so they need no place in the order. The ledger's own paths already
  follow it: `ledger.hold` (credits, then its shard), `ledger.settle_hold` and the sweeper's `ledger.expire_next`
  (the open hold, skipping locked ones, then credits, then the shard), `ledger.transfer` (credits or receivable
  first).

Per-request semantics are unchanged: requests apply one after the other, all or nothing each; an auto top-up is
queued once per crossing (the outbox's unique index, under the credits row's lock); the account spending limit is
checked against the usage and holds the requests before it left.

Revision ID: 0019_credit_holds_in_the_batch
Revises: 0018_ledger_functions_caught_up
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0019_credit_holds_in_the_batch"
down_revision = "0018_ledger_functions_caught_up"
branch_labels = None
depends_on = None


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


# the ledger: a hold booked to a given usage shard
HOLD_AT = r'''CREATE FUNCTION ledger.hold_at(p_shard int, p_id uuid, p_tenant text, p_amount bigint, p_expires_at timestamptz,
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
     WHERE code = 'usage' AND owner = '' AND shard = p_shard
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

-- one hold alone: its usage shard from its id, as before
CREATE OR REPLACE FUNCTION ledger.hold(p_id uuid, p_tenant text, p_amount bigint, p_expires_at timestamptz,
                                       p_request_id text, p_now timestamptz)
RETURNS jsonb LANGUAGE sql AS $$
    SELECT ledger.hold_at(abs(hashtext(p_id::text)) % 16, p_id, p_tenant, p_amount, p_expires_at, p_request_id, p_now)
$$;
'''

RESERVE = r'''
CREATE OR REPLACE FUNCTION limits.reserve(p_lines limits.bucket_line[], p_requests limits.reservation_request[])
RETURNS SETOF limits.reservation_answer LANGUAGE plpgsql AS $$
DECLARE
    v_problem text;
    v_json jsonb[];
    v_new uuid[];
    v_lines limits.batch_line[];
    v_rows limits.bucket_row[];
    v_totals limits.bucket_row[];
    v_refused uuid[] := '{}';
    v_state limits.bucket_state[];
    v_exceeded int[];
    v_credit jsonb;
    v_shard int;
    v_spent bigint;
    v_pending bigint;
    req limits.reservation_request;
    line limits.batch_line;
    nl int;
    j int := 1;
    j0 int;
BEGIN
    SELECT CASE
               WHEN count(*) FILTER (WHERE x.id IS NULL OR x.created_at IS NULL OR x.expires_at IS NULL) > 0
                   THEN 'a request without its id or times'
               WHEN count(*) FILTER (WHERE x.estimate IS NULL OR x.estimate < 0) > 0
                   THEN 'an estimate below zero'
               WHEN count(DISTINCT x.id) < count(*)
                   THEN 'reservation ' || (SELECT y.id FROM unnest(p_requests) y GROUP BY y.id
                                           HAVING count(*) > 1 LIMIT 1) || ' twice'
               WHEN count(*) FILTER (WHERE x.lines IS NULL OR EXISTS (
                        SELECT 1 FROM unnest(x.lines) i
                         WHERE i IS NULL OR i < 1 OR i > coalesce(cardinality(p_lines), 0))) > 0
                   THEN 'a line that is not in the batch''s lines'
           END
      INTO v_problem FROM unnest(p_requests) x;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'limits.reserve: % in one batch', v_problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the reservation rows first, in id order: replays are found, and none of it happens under bucket locks. A
    -- reservation keeps its lines (as jsonb, for its settlement); each distinct line is encoded once
    IF coalesce(cardinality(p_lines), 0) > 0 THEN
        v_json := ARRAY(SELECT jsonb_strip_nulls(to_jsonb(p_lines[i])) FROM generate_subscripts(p_lines, 1) i
                         ORDER BY i);
    END IF;
    WITH inserted AS (
        INSERT INTO limits.reservations (id, lines, estimate, hold_id, created_at, expires_at)
        SELECT x.id,
               (SELECT coalesce(jsonb_agg(v_json[u.i] ORDER BY u.o), '[]')
                  FROM unnest(x.lines) WITH ORDINALITY u(i, o)),
               x.estimate, CASE WHEN (x.hold).tenant IS NOT NULL THEN x.id END, x.created_at, x.expires_at
          FROM unnest(p_requests) x ORDER BY x.id
        ON CONFLICT (id) DO NOTHING RETURNING id)
    SELECT coalesce(array_agg(id), '{}') INTO v_new FROM inserted;
    -- the ledger rows the new requests' credit holds take, before any bucket row (the global order: accounts, then
    -- buckets): the tenants' credits accounts in account id order, then the one usage shard all of this batch's
    -- holds go to. Inside, each hold locks them again (already held) and a tenant's other rows (receivable, usage
    -- slices, the auto top-up outbox) only change under its credits row's lock.
    SELECT abs(hashtext(min(x.id::text))) % 16 INTO v_shard
      FROM unnest(p_requests) x WHERE (x.hold).tenant IS NOT NULL AND x.id = ANY (v_new);
    IF v_shard IS NOT NULL THEN
        PERFORM 1 FROM ledger.accounts
         WHERE code = 'credits' AND shard = 0
           AND owner IN (SELECT (x.hold).tenant FROM unnest(p_requests) x WHERE x.id = ANY (v_new))
         ORDER BY id FOR UPDATE;
        PERFORM 1 FROM ledger.accounts WHERE code = 'usage' AND owner = '' AND shard = v_shard FOR UPDATE;
    END IF;
    -- the new requests' lines in (request, position) order, each with the index of its bucket row in the global
    -- lock order and, rolling, of its window's total (one per rule, key and start); none: credit holds only
    IF coalesce(cardinality(p_lines), 0) > 0 THEN
        WITH lines AS (
            SELECT x.ordinality::int AS request, y.pos, l.rule_id, l.key, l.rolling_since, l.budget, l.blocking,
                   CASE WHEN l.rolling_since IS NULL THEN l.window_start ELSE '-infinity' END AS lock_at
              FROM unnest(p_requests) WITH ORDINALITY AS x
              JOIN LATERAL unnest(x.lines) WITH ORDINALITY AS y(line, pos) ON true
              JOIN unnest(p_lines) WITH ORDINALITY AS l ON l.ordinality = y.line
             WHERE x.id = ANY (v_new)
        ), ranked AS (
            SELECT lines.*, dense_rank() OVER (ORDER BY rule_id, key COLLATE "C", lock_at)::int AS bucket,
                   CASE WHEN rolling_since IS NOT NULL THEN
                       dense_rank() OVER (ORDER BY rolling_since IS NULL, rule_id, key COLLATE "C", rolling_since)::int
                   END AS total
              FROM lines
        )
        SELECT (SELECT array_agg(ROW(request, bucket, NULL, total, budget, blocking, NULL, NULL)::limits.batch_line
                                 ORDER BY request, pos) FROM ranked),
               (SELECT array_agg(ROW(rule_id, key, lock_at, NULL, NULL)::limits.bucket_row ORDER BY bucket)
                  FROM (SELECT DISTINCT ON (bucket) * FROM ranked ORDER BY bucket) b),
               (SELECT array_agg(ROW(rule_id, key, rolling_since, NULL, NULL)::limits.bucket_row ORDER BY total)
                  FROM (SELECT DISTINCT ON (total) * FROM ranked WHERE total IS NOT NULL ORDER BY total) t)
          INTO v_lines, v_rows, v_totals;
        -- lock (or create) every row once, in the global order
        FOR n IN 1..coalesce(cardinality(v_rows), 0) LOOP
            SELECT b.spent, b.pending INTO v_spent, v_pending FROM limits.buckets b
             WHERE b.rule_id = v_rows[n].rule_id AND b.key = v_rows[n].key AND b.window_start = v_rows[n].window_start
               FOR UPDATE;
            IF NOT FOUND THEN
                INSERT INTO limits.buckets AS b (rule_id, key, window_start)
                VALUES (v_rows[n].rule_id, v_rows[n].key, v_rows[n].window_start)
                ON CONFLICT (rule_id, key, window_start) DO UPDATE SET pending = b.pending
                RETURNING b.spent, b.pending INTO v_spent, v_pending;
            END IF;
            v_rows[n].spent := v_spent;
            v_rows[n].pending := v_pending;
        END LOOP;
        -- rolling: the slices still in each window, read under the head rows' locks (slices change only under them)
        IF v_totals IS NOT NULL THEN
            SELECT array_agg(ROW(t.rule_id, t.key, t.window_start,
                                 (SELECT coalesce(sum(b.spent), 0) FROM limits.buckets b
                                   WHERE b.rule_id = t.rule_id AND b.key = t.key AND b.window_start >= t.window_start),
                                 NULL)::limits.bucket_row ORDER BY t.ordinality)
              INTO v_totals FROM unnest(v_totals) WITH ORDINALITY AS t;
        END IF;
    END IF;
    -- each request against the rows as the requests before it left them
    nl := coalesce(cardinality(v_lines), 0);
    FOR i IN 1..coalesce(cardinality(p_requests), 0) LOOP
        req := p_requests[i];
        IF NOT req.id = ANY (v_new) THEN
            RETURN NEXT ROW(req.id, true, true, NULL, NULL, NULL)::limits.reservation_answer;
            CONTINUE;
        END IF;
        j0 := j;
        v_state := '{}';
        v_exceeded := '{}';
        WHILE j <= nl AND v_lines[j].request = i LOOP
            line := v_lines[j];
            v_pending := v_rows[line.bucket].pending;
            v_spent := CASE WHEN line.total IS NULL THEN v_rows[line.bucket].spent ELSE v_totals[line.total].spent END;
            v_state := v_state || ROW(v_spent, v_pending)::limits.bucket_state;
            IF line.blocking AND v_spent + v_pending + req.estimate > line.budget THEN
                v_exceeded := v_exceeded || (j - j0 + 1);
            END IF;
            j := j + 1;
        END LOOP;
        v_credit := NULL;
        IF cardinality(v_exceeded) = 0 AND (req.hold).tenant IS NOT NULL THEN
            v_credit := ledger.hold_at(v_shard, req.id, (req.hold).tenant, (req.hold).amount, req.expires_at,
                                       (req.hold).request_id, req.created_at);
            IF (v_credit->>'ok')::boolean THEN
                v_credit := NULL;
            END IF;
        END IF;
        IF cardinality(v_exceeded) > 0 OR v_credit IS NOT NULL THEN
            v_refused := v_refused || req.id;
            RETURN NEXT ROW(req.id, false, false, v_state, v_exceeded, v_credit)::limits.reservation_answer;
        ELSE
            FOR m IN j0..j - 1 LOOP
                v_rows[v_lines[m].bucket].pending := v_rows[v_lines[m].bucket].pending + req.estimate;
            END LOOP;
            RETURN NEXT ROW(req.id, true, false, v_state, v_exceeded, NULL)::limits.reservation_answer;
        END IF;
    END LOOP;
    IF cardinality(v_refused) > 0 THEN
        DELETE FROM limits.reservations WHERE id = ANY (v_refused);
    END IF;
    IF v_rows IS NOT NULL THEN
        UPDATE limits.buckets b SET pending = w.pending
          FROM unnest(v_rows) w
         WHERE b.rule_id = w.rule_id AND b.key = w.key AND b.window_start = w.window_start AND b.pending <> w.pending;
    END IF;
END $$;
'''

SETTLE = r'''
CREATE OR REPLACE FUNCTION limits.settle(p_settlements limits.settlement_request[])
RETURNS SETOF limits.settlement_answer LANGUAGE plpgsql AS $$
DECLARE
    k int := coalesce(cardinality(p_settlements), 0);
    v_problem text;
    v_settled limits.reservations[];  -- per settlement, its reservation as resolved here (NULL: not resolved)
    v_answers limits.settlement_answer[];
    v_answer limits.settlement_answer;
    v_lines limits.batch_line[];
    v_rows limits.bucket_row[];
    v_slices limits.bucket_row[];
    v_totals limits.bucket_row[];
    v_res limits.reservations;
    s limits.settlement_request;
    line limits.batch_line;
    v_late boolean;
    v_lined boolean := false;
    v_holds int := 0;
    v_hold_ids uuid[];
    v_spent bigint;
    v_pending bigint;
    v_actual bigint;
    v_release bigint;
    v_total bigint;
    v_alerts int;
    f numeric;
    n int;
    nl int;
    nt int;
    j int := 1;
BEGIN
    SELECT CASE
               WHEN count(*) FILTER (WHERE x.id IS NULL OR x.outcome IS NULL OR x.settled_at IS NULL) > 0
                   THEN 'a settlement without its id, outcome or time'
               WHEN count(*) FILTER (WHERE x.actual IS NULL OR x.actual < 0) > 0
                   THEN 'an actual cost below zero'
               WHEN count(DISTINCT x.id) < count(*)
                   THEN 'reservation ' || (SELECT y.id FROM unnest(p_settlements) y GROUP BY y.id
                                           HAVING count(*) > 1 LIMIT 1) || ' twice'
           END
      INTO v_problem FROM unnest(p_settlements) x;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'limits.settle: % in one batch', v_problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the reservation rows first, in id order (a reservation's row is always taken before any bucket; one alone is
    -- taken by its UPDATE below)
    IF k > 1 THEN
        PERFORM 1 FROM limits.reservations WHERE id IN (SELECT x.id FROM unnest(p_settlements) x) ORDER BY id
            FOR UPDATE;
    END IF;
    v_settled := array_fill(NULL::limits.reservations, ARRAY[k]);
    v_answers := array_fill(NULL::limits.settlement_answer, ARRAY[k]);
    FOR i IN 1..k LOOP
        s := p_settlements[i];
        v_late := false;
        UPDATE limits.reservations SET settled_at = s.settled_at, actual = s.actual, outcome = s.outcome
         WHERE id = s.id AND settled_at IS NULL
        RETURNING * INTO v_res;
        IF NOT FOUND AND s.outcome <> 'expired' THEN
            -- the call ended after the sweeper expired its reservation (a stream longer than the TTL, or a database
            -- outage longer than it while the settlement waited): the call happened, so its cost is still
            -- recorded, once, as 'late'. Pending went back at expiry.
            UPDATE limits.reservations SET actual = s.actual, outcome = 'late'
             WHERE id = s.id AND outcome = 'expired'
            RETURNING * INTO v_res;
            v_late := FOUND;
        END IF;
        IF FOUND THEN
            v_settled[i] := v_res;
            v_answers[i] := ROW(s.id, true, NULL, v_late, 0, NULL);
            v_holds := v_holds + (v_res.hold_id IS NOT NULL)::int;
            v_lined := v_lined OR jsonb_array_length(v_res.lines) > 0;
        ELSE
            v_answers[i] := ROW(s.id, false,
                                CASE WHEN EXISTS (SELECT 1 FROM limits.reservations WHERE id = s.id)
                                     THEN 'already settled' ELSE 'unknown reservation' END, false, 0, NULL);
        END IF;
    END LOOP;
    -- the ledger rows of the credit holds, before any bucket row (the global order: open holds, accounts, then
    -- buckets): the open holds in id order (the sweeper skips a locked one, it never waits for one), then the
    -- tenants' credits accounts in account id order, then the usage shards in id order. A hold's transfer names
    -- both accounts, also when the sweeper expired it (a late settlement bills the tenant).
    IF v_holds > 0 THEN
        v_hold_ids := ARRAY(SELECT x.hold_id FROM unnest(v_settled) x WHERE x.hold_id IS NOT NULL);
        PERFORM 1 FROM ledger.open_holds WHERE hold_id = ANY (v_hold_ids) ORDER BY hold_id FOR UPDATE;
        PERFORM 1 FROM ledger.accounts
         WHERE id IN (SELECT t.debit_account_id FROM ledger.transfers t WHERE t.id = ANY (v_hold_ids))
         ORDER BY id FOR UPDATE;
        PERFORM 1 FROM ledger.accounts
         WHERE id IN (SELECT t.credit_account_id FROM ledger.transfers t WHERE t.id = ANY (v_hold_ids))
         ORDER BY id FOR UPDATE;
    END IF;
    -- the settled reservations' lines in (settlement, position) order, each with the index of its bucket row in
    -- the global lock order, of its slice (rolling) and of its window's total (rolling, when it alerts); none:
    -- credit holds only
    IF v_lined THEN
        WITH lines AS (
            SELECT x.ordinality::int AS request, y.ordinality AS pos, y.rule_id, y.key, y.window_start,
                   y.rolling_since, y.budget, y.alert_window, y.alert_at,
                   CASE WHEN y.rolling_since IS NULL THEN y.window_start ELSE '-infinity' END AS lock_at
              FROM unnest(v_settled) WITH ORDINALITY AS x,
                   jsonb_populate_recordset(NULL::limits.bucket_line, x.lines) WITH ORDINALITY AS y
             WHERE x.id IS NOT NULL
        ), ranked AS (
            SELECT lines.*, dense_rank() OVER (ORDER BY rule_id, key COLLATE "C", lock_at)::int AS bucket,
                   CASE WHEN rolling_since IS NOT NULL THEN
                       dense_rank() OVER (ORDER BY rolling_since IS NULL, rule_id, key COLLATE "C", window_start)::int
                   END AS slice,
                   CASE WHEN rolling_since IS NOT NULL AND alert_at IS NOT NULL THEN
                       dense_rank() OVER (ORDER BY rolling_since IS NULL OR alert_at IS NULL, rule_id, key COLLATE "C",
                                          rolling_since)::int
                   END AS total
              FROM lines
        )
        SELECT (SELECT array_agg(ROW(request, bucket, slice, total, budget, NULL, alert_window,
                                     alert_at)::limits.batch_line ORDER BY request, pos) FROM ranked),
               (SELECT array_agg(ROW(rule_id, key, lock_at, NULL, NULL)::limits.bucket_row ORDER BY bucket)
                  FROM (SELECT DISTINCT ON (bucket) * FROM ranked ORDER BY bucket) b),
               (SELECT array_agg(ROW(rule_id, key, window_start, 0, NULL)::limits.bucket_row ORDER BY slice)
                  FROM (SELECT DISTINCT ON (slice) * FROM ranked WHERE slice IS NOT NULL ORDER BY slice) l),
               (SELECT array_agg(ROW(rule_id, key, rolling_since, NULL, NULL)::limits.bucket_row ORDER BY total)
                  FROM (SELECT DISTINCT ON (total) * FROM ranked WHERE total IS NOT NULL ORDER BY total) t)
          INTO v_lines, v_rows, v_slices, v_totals;
        -- lock every row once, in the global order (a row that is not there stays NULL and is not written)
        FOR q IN 1..coalesce(cardinality(v_rows), 0) LOOP
            SELECT b.spent, b.pending INTO v_spent, v_pending FROM limits.buckets b
             WHERE b.rule_id = v_rows[q].rule_id AND b.key = v_rows[q].key AND b.window_start = v_rows[q].window_start
               FOR UPDATE;
            v_rows[q].spent := v_spent;
            v_rows[q].pending := v_pending;
        END LOOP;
        IF v_totals IS NOT NULL THEN
            SELECT array_agg(ROW(t.rule_id, t.key, t.window_start,
                                 (SELECT coalesce(sum(b.spent), 0) FROM limits.buckets b
                                   WHERE b.rule_id = t.rule_id AND b.key = t.key AND b.window_start >= t.window_start),
                                 NULL)::limits.bucket_row ORDER BY t.ordinality)
              INTO v_totals FROM unnest(v_totals) WITH ORDINALITY AS t;
        END IF;
        -- the settlements one after the other, in memory: what each changes, and the alerts it crosses
        nl := coalesce(cardinality(v_lines), 0);
        nt := coalesce(cardinality(v_totals), 0);
        FOR i IN 1..k LOOP
            CONTINUE WHEN v_settled[i].id IS NULL;
            v_actual := p_settlements[i].actual;
            v_release := CASE WHEN v_answers[i].late THEN 0 ELSE v_settled[i].estimate END;
            v_alerts := 0;
            WHILE j <= nl AND v_lines[j].request = i LOOP
                line := v_lines[j];
                v_rows[line.bucket].pending := v_rows[line.bucket].pending - v_release;
                v_total := NULL;
                IF line.slice IS NULL THEN
                    v_rows[line.bucket].spent := v_rows[line.bucket].spent + v_actual;
                    v_total := v_rows[line.bucket].spent;
                ELSIF v_actual > 0 THEN
                    v_slices[line.slice].spent := v_slices[line.slice].spent + v_actual;
                    FOR t IN 1..nt LOOP  -- every window total that counts this slice
                        IF v_totals[t].rule_id = v_slices[line.slice].rule_id
                           AND v_totals[t].key = v_slices[line.slice].key
                           AND v_totals[t].window_start <= v_slices[line.slice].window_start THEN
                            v_totals[t].spent := v_totals[t].spent + v_actual;
                        END IF;
                    END LOOP;
                    IF line.total IS NOT NULL THEN
                        v_total := v_totals[line.total].spent;
                    END IF;
                END IF;
                IF v_actual > 0 AND line.alert_at IS NOT NULL AND v_total IS NOT NULL THEN
                    FOREACH f IN ARRAY line.alert_at LOOP
                        IF v_total - v_actual < f * line.budget AND v_total >= f * line.budget THEN
                            INSERT INTO limits.alerts (rule_id, key, window_start, fraction, spent, budget)
                            VALUES (v_rows[line.bucket].rule_id, v_rows[line.bucket].key, line.alert_window, f, v_total,
                                    line.budget)
                            ON CONFLICT DO NOTHING;
                            GET DIAGNOSTICS n = ROW_COUNT;
                            v_alerts := v_alerts + n;
                        END IF;
                    END LOOP;
                END IF;
                j := j + 1;
            END LOOP;
            v_answers[i].alerts := v_alerts;
        END LOOP;
        IF v_rows IS NOT NULL THEN
            UPDATE limits.buckets b SET spent = w.spent, pending = w.pending
              FROM unnest(v_rows) w
             WHERE b.rule_id = w.rule_id AND b.key = w.key AND b.window_start = w.window_start
               AND w.pending IS NOT NULL AND (b.spent <> w.spent OR b.pending <> w.pending);
        END IF;
        IF v_slices IS NOT NULL THEN
            -- written only under the head rows' locks, held above
            INSERT INTO limits.buckets AS b (rule_id, key, window_start, spent)
            SELECT l.rule_id, l.key, l.window_start, l.spent FROM unnest(v_slices) l WHERE l.spent > 0
            ON CONFLICT (rule_id, key, window_start) DO UPDATE SET spent = b.spent + EXCLUDED.spent;
        END IF;
    END IF;
    -- the credit holds, in the settlements' order (their rows are locked above): post the actual cost, or void or
    -- expire it; a late settlement posts against an expired hold, which the ledger bills as an unheld debit
    FOR i IN 1..k LOOP
        IF v_settled[i].hold_id IS NOT NULL THEN
            s := p_settlements[i];
            v_answers[i].hold := ledger.settle_hold(v_settled[i].hold_id, s.actual,
                                                    CASE WHEN s.actual > 0 THEN 'post'
                                                         WHEN s.outcome = 'expired' THEN 'expire' ELSE 'void' END,
                                                    s.settled_at);
        END IF;
    END LOOP;
    FOREACH v_answer IN ARRAY v_answers LOOP
        RETURN NEXT v_answer;
    END LOOP;
END $$;
'''

# what the downgrade restores: 0018's ledger.hold, 0017's limits.reserve and limits.settle
PREVIOUS_HOLD = r'''CREATE OR REPLACE FUNCTION ledger.hold(p_id uuid, p_tenant text, p_amount bigint, p_expires_at timestamptz,
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
'''
PREVIOUS_RESERVE = r'''
CREATE OR REPLACE FUNCTION limits.reserve(p_lines limits.bucket_line[], p_requests limits.reservation_request[])
RETURNS SETOF limits.reservation_answer LANGUAGE plpgsql AS $$
DECLARE
    v_problem text;
    v_json jsonb[];
    v_new uuid[];
    v_lines limits.batch_line[];
    v_rows limits.bucket_row[];
    v_totals limits.bucket_row[];
    v_refused uuid[] := '{}';
    v_state limits.bucket_state[];
    v_exceeded int[];
    v_credit jsonb;
    v_spent bigint;
    v_pending bigint;
    req limits.reservation_request;
    line limits.batch_line;
    nl int;
    j int := 1;
    j0 int;
BEGIN
    SELECT CASE
               WHEN count(*) FILTER (WHERE x.id IS NULL OR x.created_at IS NULL OR x.expires_at IS NULL) > 0
                   THEN 'a request without its id or times'
               WHEN count(*) FILTER (WHERE x.estimate IS NULL OR x.estimate < 0) > 0
                   THEN 'an estimate below zero'
               WHEN count(DISTINCT x.id) < count(*)
                   THEN 'reservation ' || (SELECT y.id FROM unnest(p_requests) y GROUP BY y.id
                                           HAVING count(*) > 1 LIMIT 1) || ' twice'
               WHEN count(*) FILTER (WHERE (x.hold).tenant IS NOT NULL) > 1
                   THEN 'more than one credit hold'
               WHEN count(*) FILTER (WHERE x.lines IS NULL OR EXISTS (
                        SELECT 1 FROM unnest(x.lines) i
                         WHERE i IS NULL OR i < 1 OR i > coalesce(cardinality(p_lines), 0))) > 0
                   THEN 'a line that is not in the batch''s lines'
           END
      INTO v_problem FROM unnest(p_requests) x;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'limits.reserve: % in one batch', v_problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the reservation rows first, in id order: replays are found, and none of it happens under bucket locks. A
    -- reservation keeps its lines (as jsonb, for its settlement); each distinct line is encoded once
    IF coalesce(cardinality(p_lines), 0) > 0 THEN
        v_json := ARRAY(SELECT jsonb_strip_nulls(to_jsonb(p_lines[i])) FROM generate_subscripts(p_lines, 1) i
                         ORDER BY i);
    END IF;
    WITH inserted AS (
        INSERT INTO limits.reservations (id, lines, estimate, hold_id, created_at, expires_at)
        SELECT x.id,
               (SELECT coalesce(jsonb_agg(v_json[u.i] ORDER BY u.o), '[]')
                  FROM unnest(x.lines) WITH ORDINALITY u(i, o)),
               x.estimate, CASE WHEN (x.hold).tenant IS NOT NULL THEN x.id END, x.created_at, x.expires_at
          FROM unnest(p_requests) x ORDER BY x.id
        ON CONFLICT (id) DO NOTHING RETURNING id)
    SELECT coalesce(array_agg(id), '{}') INTO v_new FROM inserted;
    -- the new requests' lines in (request, position) order, each with the index of its bucket row in the global
    -- lock order and, rolling, of its window's total (one per rule, key and start); none: credit holds only
    IF coalesce(cardinality(p_lines), 0) > 0 THEN
        WITH lines AS (
            SELECT x.ordinality::int AS request, y.pos, l.rule_id, l.key, l.rolling_since, l.budget, l.blocking,
                   CASE WHEN l.rolling_since IS NULL THEN l.window_start ELSE '-infinity' END AS lock_at
              FROM unnest(p_requests) WITH ORDINALITY AS x
              JOIN LATERAL unnest(x.lines) WITH ORDINALITY AS y(line, pos) ON true
              JOIN unnest(p_lines) WITH ORDINALITY AS l ON l.ordinality = y.line
             WHERE x.id = ANY (v_new)
        ), ranked AS (
            SELECT lines.*, dense_rank() OVER (ORDER BY rule_id, key COLLATE "C", lock_at)::int AS bucket,
                   CASE WHEN rolling_since IS NOT NULL THEN
                       dense_rank() OVER (ORDER BY rolling_since IS NULL, rule_id, key COLLATE "C", rolling_since)::int
                   END AS total
              FROM lines
        )
        SELECT (SELECT array_agg(ROW(request, bucket, NULL, total, budget, blocking, NULL, NULL)::limits.batch_line
                                 ORDER BY request, pos) FROM ranked),
               (SELECT array_agg(ROW(rule_id, key, lock_at, NULL, NULL)::limits.bucket_row ORDER BY bucket)
                  FROM (SELECT DISTINCT ON (bucket) * FROM ranked ORDER BY bucket) b),
               (SELECT array_agg(ROW(rule_id, key, rolling_since, NULL, NULL)::limits.bucket_row ORDER BY total)
                  FROM (SELECT DISTINCT ON (total) * FROM ranked WHERE total IS NOT NULL ORDER BY total) t)
          INTO v_lines, v_rows, v_totals;
        -- lock (or create) every row once, in the global order
        FOR n IN 1..coalesce(cardinality(v_rows), 0) LOOP
            SELECT b.spent, b.pending INTO v_spent, v_pending FROM limits.buckets b
             WHERE b.rule_id = v_rows[n].rule_id AND b.key = v_rows[n].key AND b.window_start = v_rows[n].window_start
               FOR UPDATE;
            IF NOT FOUND THEN
                INSERT INTO limits.buckets AS b (rule_id, key, window_start)
                VALUES (v_rows[n].rule_id, v_rows[n].key, v_rows[n].window_start)
                ON CONFLICT (rule_id, key, window_start) DO UPDATE SET pending = b.pending
                RETURNING b.spent, b.pending INTO v_spent, v_pending;
            END IF;
            v_rows[n].spent := v_spent;
            v_rows[n].pending := v_pending;
        END LOOP;
        -- rolling: the slices still in each window, read under the head rows' locks (slices change only under them)
        IF v_totals IS NOT NULL THEN
            SELECT array_agg(ROW(t.rule_id, t.key, t.window_start,
                                 (SELECT coalesce(sum(b.spent), 0) FROM limits.buckets b
                                   WHERE b.rule_id = t.rule_id AND b.key = t.key AND b.window_start >= t.window_start),
                                 NULL)::limits.bucket_row ORDER BY t.ordinality)
              INTO v_totals FROM unnest(v_totals) WITH ORDINALITY AS t;
        END IF;
    END IF;
    -- each request against the rows as the requests before it left them
    nl := coalesce(cardinality(v_lines), 0);
    FOR i IN 1..coalesce(cardinality(p_requests), 0) LOOP
        req := p_requests[i];
        IF NOT req.id = ANY (v_new) THEN
            RETURN NEXT ROW(req.id, true, true, NULL, NULL, NULL)::limits.reservation_answer;
            CONTINUE;
        END IF;
        j0 := j;
        v_state := '{}';
        v_exceeded := '{}';
        WHILE j <= nl AND v_lines[j].request = i LOOP
            line := v_lines[j];
            v_pending := v_rows[line.bucket].pending;
            v_spent := CASE WHEN line.total IS NULL THEN v_rows[line.bucket].spent ELSE v_totals[line.total].spent END;
            v_state := v_state || ROW(v_spent, v_pending)::limits.bucket_state;
            IF line.blocking AND v_spent + v_pending + req.estimate > line.budget THEN
                v_exceeded := v_exceeded || (j - j0 + 1);
            END IF;
            j := j + 1;
        END LOOP;
        v_credit := NULL;
        IF cardinality(v_exceeded) = 0 AND (req.hold).tenant IS NOT NULL THEN
            v_credit := ledger.hold(req.id, (req.hold).tenant, (req.hold).amount, req.expires_at,
                                    (req.hold).request_id, req.created_at);
            IF (v_credit->>'ok')::boolean THEN
                v_credit := NULL;
            END IF;
        END IF;
        IF cardinality(v_exceeded) > 0 OR v_credit IS NOT NULL THEN
            v_refused := v_refused || req.id;
            RETURN NEXT ROW(req.id, false, false, v_state, v_exceeded, v_credit)::limits.reservation_answer;
        ELSE
            FOR m IN j0..j - 1 LOOP
                v_rows[v_lines[m].bucket].pending := v_rows[v_lines[m].bucket].pending + req.estimate;
            END LOOP;
            RETURN NEXT ROW(req.id, true, false, v_state, v_exceeded, NULL)::limits.reservation_answer;
        END IF;
    END LOOP;
    IF cardinality(v_refused) > 0 THEN
        DELETE FROM limits.reservations WHERE id = ANY (v_refused);
    END IF;
    IF v_rows IS NOT NULL THEN
        UPDATE limits.buckets b SET pending = w.pending
          FROM unnest(v_rows) w
         WHERE b.rule_id = w.rule_id AND b.key = w.key AND b.window_start = w.window_start AND b.pending <> w.pending;
    END IF;
END $$;
'''
PREVIOUS_SETTLE = r'''
CREATE OR REPLACE FUNCTION limits.settle(p_settlements limits.settlement_request[])
RETURNS SETOF limits.settlement_answer LANGUAGE plpgsql AS $$
DECLARE
    k int := coalesce(cardinality(p_settlements), 0);
    v_problem text;
    v_settled limits.reservations[];  -- per settlement, its reservation as resolved here (NULL: not resolved)
    v_answers limits.settlement_answer[];
    v_answer limits.settlement_answer;
    v_lines limits.batch_line[];
    v_rows limits.bucket_row[];
    v_slices limits.bucket_row[];
    v_totals limits.bucket_row[];
    v_res limits.reservations;
    s limits.settlement_request;
    line limits.batch_line;
    v_late boolean;
    v_lined boolean := false;
    v_holds int := 0;
    v_spent bigint;
    v_pending bigint;
    v_actual bigint;
    v_release bigint;
    v_total bigint;
    v_alerts int;
    f numeric;
    n int;
    nl int;
    nt int;
    j int := 1;
BEGIN
    SELECT CASE
               WHEN count(*) FILTER (WHERE x.id IS NULL OR x.outcome IS NULL OR x.settled_at IS NULL) > 0
                   THEN 'a settlement without its id, outcome or time'
               WHEN count(*) FILTER (WHERE x.actual IS NULL OR x.actual < 0) > 0
                   THEN 'an actual cost below zero'
               WHEN count(DISTINCT x.id) < count(*)
                   THEN 'reservation ' || (SELECT y.id FROM unnest(p_settlements) y GROUP BY y.id
                                           HAVING count(*) > 1 LIMIT 1) || ' twice'
           END
      INTO v_problem FROM unnest(p_settlements) x;
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION 'limits.settle: % in one batch', v_problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the reservation rows first, in id order (a reservation's row is always taken before any bucket; one alone is
    -- taken by its UPDATE below)
    IF k > 1 THEN
        PERFORM 1 FROM limits.reservations WHERE id IN (SELECT x.id FROM unnest(p_settlements) x) ORDER BY id
            FOR UPDATE;
    END IF;
    v_settled := array_fill(NULL::limits.reservations, ARRAY[k]);
    v_answers := array_fill(NULL::limits.settlement_answer, ARRAY[k]);
    FOR i IN 1..k LOOP
        s := p_settlements[i];
        v_late := false;
        UPDATE limits.reservations SET settled_at = s.settled_at, actual = s.actual, outcome = s.outcome
         WHERE id = s.id AND settled_at IS NULL
        RETURNING * INTO v_res;
        IF NOT FOUND AND s.outcome <> 'expired' THEN
            -- the call ended after the sweeper expired its reservation (a stream longer than the TTL, or a database
            -- outage longer than it while the settlement waited): the call happened, so its cost is still
            -- recorded, once, as 'late'. Pending went back at expiry.
            UPDATE limits.reservations SET actual = s.actual, outcome = 'late'
             WHERE id = s.id AND outcome = 'expired'
            RETURNING * INTO v_res;
            v_late := FOUND;
        END IF;
        IF FOUND THEN
            v_settled[i] := v_res;
            v_answers[i] := ROW(s.id, true, NULL, v_late, 0, NULL);
            v_holds := v_holds + (v_res.hold_id IS NOT NULL)::int;
            v_lined := v_lined OR jsonb_array_length(v_res.lines) > 0;
        ELSE
            v_answers[i] := ROW(s.id, false,
                                CASE WHEN EXISTS (SELECT 1 FROM limits.reservations WHERE id = s.id)
                                     THEN 'already settled' ELSE 'unknown reservation' END, false, 0, NULL);
        END IF;
    END LOOP;
    IF v_holds > 1 THEN
        RAISE EXCEPTION 'limits.settle: more than one credit hold in one batch'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- the settled reservations' lines in (settlement, position) order, each with the index of its bucket row in
    -- the global lock order, of its slice (rolling) and of its window's total (rolling, when it alerts); none:
    -- credit holds only
    IF v_lined THEN
        WITH lines AS (
            SELECT x.ordinality::int AS request, y.ordinality AS pos, y.rule_id, y.key, y.window_start,
                   y.rolling_since, y.budget, y.alert_window, y.alert_at,
                   CASE WHEN y.rolling_since IS NULL THEN y.window_start ELSE '-infinity' END AS lock_at
              FROM unnest(v_settled) WITH ORDINALITY AS x,
                   jsonb_populate_recordset(NULL::limits.bucket_line, x.lines) WITH ORDINALITY AS y
             WHERE x.id IS NOT NULL
        ), ranked AS (
            SELECT lines.*, dense_rank() OVER (ORDER BY rule_id, key COLLATE "C", lock_at)::int AS bucket,
                   CASE WHEN rolling_since IS NOT NULL THEN
                       dense_rank() OVER (ORDER BY rolling_since IS NULL, rule_id, key COLLATE "C", window_start)::int
                   END AS slice,
                   CASE WHEN rolling_since IS NOT NULL AND alert_at IS NOT NULL THEN
                       dense_rank() OVER (ORDER BY rolling_since IS NULL OR alert_at IS NULL, rule_id, key COLLATE "C",
                                          rolling_since)::int
                   END AS total
              FROM lines
        )
        SELECT (SELECT array_agg(ROW(request, bucket, slice, total, budget, NULL, alert_window,
                                     alert_at)::limits.batch_line ORDER BY request, pos) FROM ranked),
               (SELECT array_agg(ROW(rule_id, key, lock_at, NULL, NULL)::limits.bucket_row ORDER BY bucket)
                  FROM (SELECT DISTINCT ON (bucket) * FROM ranked ORDER BY bucket) b),
               (SELECT array_agg(ROW(rule_id, key, window_start, 0, NULL)::limits.bucket_row ORDER BY slice)
                  FROM (SELECT DISTINCT ON (slice) * FROM ranked WHERE slice IS NOT NULL ORDER BY slice) l),
               (SELECT array_agg(ROW(rule_id, key, rolling_since, NULL, NULL)::limits.bucket_row ORDER BY total)
                  FROM (SELECT DISTINCT ON (total) * FROM ranked WHERE total IS NOT NULL ORDER BY total) t)
          INTO v_lines, v_rows, v_slices, v_totals;
        -- lock every row once, in the global order (a row that is not there stays NULL and is not written)
        FOR q IN 1..coalesce(cardinality(v_rows), 0) LOOP
            SELECT b.spent, b.pending INTO v_spent, v_pending FROM limits.buckets b
             WHERE b.rule_id = v_rows[q].rule_id AND b.key = v_rows[q].key AND b.window_start = v_rows[q].window_start
               FOR UPDATE;
            v_rows[q].spent := v_spent;
            v_rows[q].pending := v_pending;
        END LOOP;
        IF v_totals IS NOT NULL THEN
            SELECT array_agg(ROW(t.rule_id, t.key, t.window_start,
                                 (SELECT coalesce(sum(b.spent), 0) FROM limits.buckets b
                                   WHERE b.rule_id = t.rule_id AND b.key = t.key AND b.window_start >= t.window_start),
                                 NULL)::limits.bucket_row ORDER BY t.ordinality)
              INTO v_totals FROM unnest(v_totals) WITH ORDINALITY AS t;
        END IF;
        -- the settlements one after the other, in memory: what each changes, and the alerts it crosses
        nl := coalesce(cardinality(v_lines), 0);
        nt := coalesce(cardinality(v_totals), 0);
        FOR i IN 1..k LOOP
            CONTINUE WHEN v_settled[i].id IS NULL;
            v_actual := p_settlements[i].actual;
            v_release := CASE WHEN v_answers[i].late THEN 0 ELSE v_settled[i].estimate END;
            v_alerts := 0;
            WHILE j <= nl AND v_lines[j].request = i LOOP
                line := v_lines[j];
                v_rows[line.bucket].pending := v_rows[line.bucket].pending - v_release;
                v_total := NULL;
                IF line.slice IS NULL THEN
                    v_rows[line.bucket].spent := v_rows[line.bucket].spent + v_actual;
                    v_total := v_rows[line.bucket].spent;
                ELSIF v_actual > 0 THEN
                    v_slices[line.slice].spent := v_slices[line.slice].spent + v_actual;
                    FOR t IN 1..nt LOOP  -- every window total that counts this slice
                        IF v_totals[t].rule_id = v_slices[line.slice].rule_id
                           AND v_totals[t].key = v_slices[line.slice].key
                           AND v_totals[t].window_start <= v_slices[line.slice].window_start THEN
                            v_totals[t].spent := v_totals[t].spent + v_actual;
                        END IF;
                    END LOOP;
                    IF line.total IS NOT NULL THEN
                        v_total := v_totals[line.total].spent;
                    END IF;
                END IF;
                IF v_actual > 0 AND line.alert_at IS NOT NULL AND v_total IS NOT NULL THEN
                    FOREACH f IN ARRAY line.alert_at LOOP
                        IF v_total - v_actual < f * line.budget AND v_total >= f * line.budget THEN
                            INSERT INTO limits.alerts (rule_id, key, window_start, fraction, spent, budget)
                            VALUES (v_rows[line.bucket].rule_id, v_rows[line.bucket].key, line.alert_window, f, v_total,
                                    line.budget)
                            ON CONFLICT DO NOTHING;
                            GET DIAGNOSTICS n = ROW_COUNT;
                            v_alerts := v_alerts + n;
                        END IF;
                    END LOOP;
                END IF;
                j := j + 1;
            END LOOP;
            v_answers[i].alerts := v_alerts;
        END LOOP;
        IF v_rows IS NOT NULL THEN
            UPDATE limits.buckets b SET spent = w.spent, pending = w.pending
              FROM unnest(v_rows) w
             WHERE b.rule_id = w.rule_id AND b.key = w.key AND b.window_start = w.window_start
               AND w.pending IS NOT NULL AND (b.spent <> w.spent OR b.pending <> w.pending);
        END IF;
        IF v_slices IS NOT NULL THEN
            -- written only under the head rows' locks, held above
            INSERT INTO limits.buckets AS b (rule_id, key, window_start, spent)
            SELECT l.rule_id, l.key, l.window_start, l.spent FROM unnest(v_slices) l WHERE l.spent > 0
            ON CONFLICT (rule_id, key, window_start) DO UPDATE SET spent = b.spent + EXCLUDED.spent;
        END IF;
    END IF;
    -- the credit hold, last (ledger rows come after every bucket row): post the actual cost, or void or expire it; a
    -- late settlement posts against an expired hold, which the ledger bills as an unheld debit
    FOR i IN 1..k LOOP
        IF v_settled[i].hold_id IS NOT NULL THEN
            s := p_settlements[i];
            v_answers[i].hold := ledger.settle_hold(v_settled[i].hold_id, s.actual,
                                                    CASE WHEN s.actual > 0 THEN 'post'
                                                         WHEN s.outcome = 'expired' THEN 'expire' ELSE 'void' END,
                                                    s.settled_at);
        END IF;
    END LOOP;
    FOREACH v_answer IN ARRAY v_answers LOOP
        RETURN NEXT v_answer;
    END LOOP;
END $$;
'''


def upgrade() -> None:
    run_script(HOLD_AT)
    run_script(RESERVE)
    run_script(SETTLE)


def downgrade() -> None:
    # the functions as 0017 and 0018 left them (one credit hold per batch)
    run_script(PREVIOUS_RESERVE)
    run_script(PREVIOUS_SETTLE)
    run_script(PREVIOUS_HOLD)
    run_script("DROP FUNCTION ledger.hold_at(int, uuid, text, bigint, timestamptz, text, timestamptz)")
