"""Rate limits in the one reservation path: a bucket line says what it counts, so a request's rate limits are
reserved in the same `limits.reserve` call (and transaction) as its spend limits and credit hold, and settled by the
same `limits.settle`.

- `limits.bucket_line.unit` (and `limits.batch_line.unit`): NULL, money (the line takes the request's estimate and
  counts its actual cost, as before); `requests` (takes 1, counts 1); `tokens` (takes the request's token bound,
  counts the tokens the call used).
- `limits.reservation_request.tokens`: the request's token bound (its input bound plus its output limit), kept in
  the new column `limits.reservations.tokens`, so that settlement gives back exactly what was taken.
- `limits.settlement_request.tokens`: the tokens the call used; NULL counts the bound.

A rate line fits when `spent + pending + take <= budget`, as a spend line does; the check, the lock order (rule id,
key, window start; rule ids of rate limits are uuids like the spend rules'), the batching, replays and refusals are
0023's. At settlement a rate line gives back what it took; an expired reservation (the sweeper: its instance died)
counts nothing, as it spends nothing, and a late settlement then counts 1 request, or the tokens used.
Reservations made before this migration have no unit in their lines: money, as they were.

Revision ID: 0024_rate_limits
Revises: 0023_holds_set_wise
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0024_rate_limits"
down_revision = "0023_holds_set_wise"
branch_labels = None
depends_on = None


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


TYPES = """
ALTER TYPE limits.bucket_line ADD ATTRIBUTE unit text;
ALTER TYPE limits.batch_line ADD ATTRIBUTE unit text;
ALTER TYPE limits.reservation_request ADD ATTRIBUTE tokens bigint;
ALTER TYPE limits.settlement_request ADD ATTRIBUTE tokens bigint;
ALTER TABLE limits.reservations ADD COLUMN tokens bigint;
"""

PREVIOUS_TYPES = """
ALTER TABLE limits.reservations DROP COLUMN tokens;
ALTER TYPE limits.settlement_request DROP ATTRIBUTE tokens;
ALTER TYPE limits.reservation_request DROP ATTRIBUTE tokens;
ALTER TYPE limits.batch_line DROP ATTRIBUTE unit;
ALTER TYPE limits.bucket_line DROP ATTRIBUTE unit;
"""

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
    v_usage bigint;
    -- the credits accounts of the batch's holds, locked, and what the holds before change in them
    v_acc_id bigint[];
    v_acc_owner text[];
    v_acc_avail bigint[];
    v_acc_pending bigint[];
    v_acc_limit bigint[];
    v_acc_duration text[];
    v_acc_strategy text[];
    v_acc_threshold bigint[];
    v_acc_topup bigint[];
    v_acc_add bigint[];
    v_taken uuid[];  -- ids the ledger already has a transfer for
    -- the holds granted, written together at the end
    v_h_id uuid[] := '{}';
    v_h_account bigint[] := '{}';
    v_h_tenant text[] := '{}';
    v_h_amount bigint[] := '{}';
    v_h_request text[] := '{}';
    v_h_expires timestamptz[] := '{}';
    v_h_created timestamptz[] := '{}';
    v_amount bigint;
    v_take bigint;  -- what a line takes of its bucket: the estimate, 1 request, or the token bound
    v_limit_spent bigint;
    a int;
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
               WHEN count(*) FILTER (WHERE x.tokens < 0) > 0
                   THEN 'tokens below zero'
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
        INSERT INTO limits.reservations (id, lines, estimate, tokens, hold_id, created_at, expires_at)
        SELECT x.id,
               (SELECT coalesce(jsonb_agg(v_json[u.i] ORDER BY u.o), '[]')
                  FROM unnest(x.lines) WITH ORDINALITY u(i, o)),
               x.estimate, x.tokens, CASE WHEN (x.hold).tenant IS NOT NULL THEN x.id END, x.created_at,
               x.expires_at
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
        SELECT array_agg(c.id ORDER BY c.id), array_agg(c.owner ORDER BY c.id),
               array_agg(c.credits_posted - c.debits_posted - c.debits_pending ORDER BY c.id),
               array_agg(c.debits_pending ORDER BY c.id), array_agg(c.spend_limit ORDER BY c.id),
               array_agg(c.spend_limit_duration ORDER BY c.id), array_agg(c.spend_limit_strategy ORDER BY c.id),
               array_agg(c.auto_topup_threshold ORDER BY c.id), array_agg(c.auto_topup_amount ORDER BY c.id),
               array_agg(0::bigint ORDER BY c.id)
          INTO v_acc_id, v_acc_owner, v_acc_avail, v_acc_pending, v_acc_limit, v_acc_duration, v_acc_strategy,
               v_acc_threshold, v_acc_topup, v_acc_add
          FROM (SELECT * FROM ledger.accounts
                 WHERE code = 'credits' AND shard = 0
                   AND owner IN (SELECT (x.hold).tenant FROM unnest(p_requests) x WHERE x.id = ANY (v_new))
                 ORDER BY id FOR UPDATE) c;
        SELECT id INTO v_usage FROM ledger.accounts WHERE code = 'usage' AND owner = '' AND shard = v_shard FOR UPDATE;
        v_taken := ARRAY(SELECT t.id FROM ledger.transfers t
                          WHERE t.id IN (SELECT x.id FROM unnest(p_requests) x
                                          WHERE (x.hold).tenant IS NOT NULL AND x.id = ANY (v_new)));
    END IF;
    -- the new requests' lines in (request, position) order, each with the index of its bucket row in the global
    -- lock order and, rolling, of its window's total (one per rule, key and start); none: credit holds only
    IF coalesce(cardinality(p_lines), 0) > 0 THEN
        WITH lines AS (
            SELECT x.ordinality::int AS request, y.pos, l.rule_id, l.key, l.rolling_since, l.budget, l.blocking,
                   l.unit, CASE WHEN l.rolling_since IS NULL THEN l.window_start ELSE '-infinity' END AS lock_at
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
        SELECT (SELECT array_agg(ROW(request, bucket, NULL, total, budget, blocking, NULL, NULL, unit)::limits.batch_line
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
            v_take := CASE line.unit WHEN 'requests' THEN 1 WHEN 'tokens' THEN coalesce(req.tokens, 0)
                                     ELSE req.estimate END;
            IF line.blocking AND v_spent + v_pending + v_take > line.budget THEN
                v_exceeded := v_exceeded || (j - j0 + 1);
            END IF;
            j := j + 1;
        END LOOP;
        v_credit := NULL;
        IF cardinality(v_exceeded) = 0 AND (req.hold).tenant IS NOT NULL THEN
            -- the credit hold, as `ledger.hold` places it, against the accounts as the holds before left them
            a := array_position(v_acc_owner, (req.hold).tenant);
            v_amount := (req.hold).amount;
            IF a IS NULL OR v_amount IS NULL OR v_amount < 0 OR req.id = ANY (v_taken) THEN
                -- no such account, a bad amount, or an id the ledger already has (a replay of the same hold is
                -- granted): the ledger answers, and changes nothing
                v_credit := ledger.hold_at(v_shard, req.id, (req.hold).tenant, v_amount, req.expires_at,
                                           (req.hold).request_id, req.created_at);
                IF (v_credit->>'ok')::boolean THEN
                    v_credit := NULL;
                END IF;
            ELSE
                IF v_acc_limit[a] IS NOT NULL THEN
                    -- usage slices change only under the credits row's lock, held since the start
                    SELECT coalesce(sum(u.spent), 0) INTO v_limit_spent FROM ledger.usage_hourly u
                     WHERE u.tenant = (req.hold).tenant
                       AND u.hour >= ledger.limit_window_start(v_acc_duration[a], v_acc_strategy[a], req.created_at);
                END IF;
                IF v_acc_avail[a] < v_amount THEN
                    v_credit := jsonb_build_object('ok', false, 'reason', 'insufficient_credit',
                                                   'available', v_acc_avail[a]);
                ELSIF v_acc_limit[a] IS NOT NULL AND v_limit_spent + v_acc_pending[a] + v_amount > v_acc_limit[a] THEN
                    v_credit := jsonb_build_object('ok', false, 'reason', 'spending_limit', 'available', v_acc_avail[a],
                                                   'limit', v_acc_limit[a], 'spent', v_limit_spent,
                                                   'pending', v_acc_pending[a], 'duration', v_acc_duration[a],
                                                   'strategy', v_acc_strategy[a]);
                ELSE
                    v_acc_avail[a] := v_acc_avail[a] - v_amount;
                    v_acc_pending[a] := v_acc_pending[a] + v_amount;
                    v_acc_add[a] := v_acc_add[a] + v_amount;
                    v_h_id := v_h_id || req.id;
                    v_h_account := v_h_account || v_acc_id[a];
                    v_h_tenant := v_h_tenant || (req.hold).tenant;
                    v_h_amount := v_h_amount || v_amount;
                    v_h_request := v_h_request || (req.hold).request_id;
                    v_h_expires := v_h_expires || req.expires_at;
                    v_h_created := v_h_created || req.created_at;
                    IF v_acc_threshold[a] IS NOT NULL THEN
                        PERFORM ledger.auto_topup_on_crossing((req.hold).tenant, v_acc_avail[a] + v_amount,
                                                              v_acc_avail[a], v_acc_threshold[a], v_acc_topup[a],
                                                              req.created_at);
                    END IF;
                END IF;
            END IF;
        END IF;
        IF cardinality(v_exceeded) > 0 OR v_credit IS NOT NULL THEN
            v_refused := v_refused || req.id;
            RETURN NEXT ROW(req.id, false, false, v_state, v_exceeded, v_credit)::limits.reservation_answer;
        ELSE
            FOR m IN j0..j - 1 LOOP
                v_rows[v_lines[m].bucket].pending := v_rows[v_lines[m].bucket].pending
                    + CASE v_lines[m].unit WHEN 'requests' THEN 1 WHEN 'tokens' THEN coalesce(req.tokens, 0)
                                           ELSE req.estimate END;
            END LOOP;
            RETURN NEXT ROW(req.id, true, false, v_state, v_exceeded, NULL)::limits.reservation_answer;
        END IF;
    END LOOP;
    IF cardinality(v_refused) > 0 THEN
        DELETE FROM limits.reservations WHERE id = ANY (v_refused);
    END IF;
    -- the granted holds, together: pending on the tenants' credits and on the usage shard, a pending transfer and
    -- an open hold each
    IF cardinality(v_h_id) > 0 THEN
        UPDATE ledger.accounts c SET debits_pending = c.debits_pending + d.amount
          FROM unnest(v_acc_id, v_acc_add) d(id, amount)
         WHERE c.id = d.id AND d.amount <> 0;
        UPDATE ledger.accounts SET credits_pending = credits_pending + (SELECT sum(x) FROM unnest(v_h_amount) x)
         WHERE id = v_usage;
        INSERT INTO ledger.transfers (id, debit_account_id, credit_account_id, amount, kind, code, expires_at,
                                      request_id, created_at)
        SELECT h.id, h.account, v_usage, h.amount, 'pending', 'usage', h.expires, h.request, h.created
          FROM unnest(v_h_id, v_h_account, v_h_amount, v_h_expires, v_h_request, v_h_created)
               AS h(id, account, amount, expires, request, created);
        INSERT INTO ledger.open_holds (hold_id, tenant, debit_account_id, credit_account_id, amount, request_id,
                                       expires_at)
        SELECT h.id, h.tenant, h.account, v_usage, h.amount, h.request, h.expires
          FROM unnest(v_h_id, v_h_tenant, v_h_account, v_h_amount, v_h_request, v_h_expires)
               AS h(id, tenant, account, amount, request, expires);
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
    v_row record;
    -- the open holds of the batch, locked
    v_oh_id uuid[];
    v_oh_tenant text[];
    v_oh_debit bigint[];
    v_oh_credit bigint[];
    v_oh_amount bigint[];
    v_oh_request text[];
    -- the accounts they move (credits, then usage shards), locked, and what the settlements change in them
    v_acc_id bigint[];
    v_acc_avail bigint[];
    v_acc_limit bigint[];
    v_acc_dp bigint[];
    v_acc_dd bigint[];
    v_acc_cp bigint[];
    v_acc_cd bigint[];
    -- what is written together (at the end, or before a settlement the ledger resolves itself)
    v_t_id uuid[] := '{}';
    v_t_debit bigint[] := '{}';
    v_t_credit bigint[] := '{}';
    v_t_amount bigint[] := '{}';
    v_t_kind text[] := '{}';
    v_t_pending uuid[] := '{}';
    v_t_request text[] := '{}';
    v_t_at timestamptz[] := '{}';
    v_u_tenant text[] := '{}';
    v_u_hour timestamptz[] := '{}';
    v_u_spent bigint[] := '{}';
    v_kind text;
    v_post bigint;
    o int;
    a int;
    u int;
    v_spent bigint;
    v_pending bigint;
    v_actual bigint;
    v_release bigint;
    v_counted bigint;  -- what a line counts at settlement: the actual cost, 1 request, or the tokens used
    v_freed bigint;  -- what it gives back of its reservation
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
               WHEN count(*) FILTER (WHERE x.tokens < 0) > 0
                   THEN 'tokens below zero'
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
    -- each reservation resolved at most once, all in one statement (the ids are distinct, so this is what one
    -- after the other would do): an open one gets its outcome
    FOR v_row IN
        UPDATE limits.reservations r SET settled_at = x.settled_at, actual = x.actual, outcome = x.outcome
          FROM unnest(p_settlements) WITH ORDINALITY AS x(id, actual, outcome, settled_at, tokens, n)
         WHERE r.id = x.id AND r.settled_at IS NULL
        RETURNING x.n, r AS res
    LOOP
        v_res := v_row.res;
        v_settled[v_row.n] := v_res;
        v_answers[v_row.n] := ROW(v_res.id, true, NULL, false, 0, NULL);
    END LOOP;
    -- the call ended after the sweeper expired its reservation (a stream longer than the TTL, or a database outage
    -- longer than it while the settlement waited): the call happened, so its cost is still recorded, once, as
    -- 'late'. Pending went back at expiry.
    FOR v_row IN
        UPDATE limits.reservations r SET actual = x.actual, outcome = 'late'
          FROM unnest(p_settlements) WITH ORDINALITY AS x(id, actual, outcome, settled_at, tokens, n)
         WHERE r.id = x.id AND r.outcome = 'expired' AND x.outcome <> 'expired'
        RETURNING x.n, r AS res
    LOOP
        v_res := v_row.res;
        v_settled[v_row.n] := v_res;
        v_answers[v_row.n] := ROW(v_res.id, true, NULL, true, 0, NULL);
    END LOOP;
    FOR i IN 1..k LOOP
        IF v_settled[i].id IS NOT NULL THEN
            v_holds := v_holds + (v_settled[i].hold_id IS NOT NULL)::int;
            v_lined := v_lined OR jsonb_array_length(v_settled[i].lines) > 0;
        ELSE
            v_answers[i] := ROW(p_settlements[i].id, false,
                                CASE WHEN EXISTS (SELECT 1 FROM limits.reservations WHERE id = p_settlements[i].id)
                                     THEN 'already settled' ELSE 'unknown reservation' END, false, 0, NULL);
        END IF;
    END LOOP;
    -- the ledger rows of the credit holds, before any bucket row (the global order: open holds, accounts, then
    -- buckets): the open holds in id order (the sweeper skips a locked one, it never waits for one), then the
    -- tenants' credits accounts in account id order, then the usage shards in id order. A hold's transfer names
    -- both accounts, also when the sweeper expired it (a late settlement bills the tenant).
    IF v_holds > 0 THEN
        v_hold_ids := ARRAY(SELECT x.hold_id FROM unnest(v_settled) x WHERE x.hold_id IS NOT NULL);
        SELECT array_agg(h.hold_id), array_agg(h.tenant), array_agg(h.debit_account_id),
               array_agg(h.credit_account_id), array_agg(h.amount), array_agg(h.request_id)
          INTO v_oh_id, v_oh_tenant, v_oh_debit, v_oh_credit, v_oh_amount, v_oh_request
          FROM (SELECT * FROM ledger.open_holds WHERE hold_id = ANY (v_hold_ids) ORDER BY hold_id FOR UPDATE) h;
        PERFORM 1 FROM ledger.accounts
         WHERE id IN (SELECT t.debit_account_id FROM ledger.transfers t WHERE t.id = ANY (v_hold_ids))
         ORDER BY id FOR UPDATE;
        PERFORM 1 FROM ledger.accounts
         WHERE id IN (SELECT t.credit_account_id FROM ledger.transfers t WHERE t.id = ANY (v_hold_ids))
         ORDER BY id FOR UPDATE;
        SELECT array_agg(c.id ORDER BY c.id),
               array_agg(c.credits_posted - c.debits_posted - c.debits_pending ORDER BY c.id),
               array_agg(c.spend_limit ORDER BY c.id), array_agg(0::bigint), array_agg(0::bigint), array_agg(0::bigint),
               array_agg(0::bigint)
          INTO v_acc_id, v_acc_avail, v_acc_limit, v_acc_dp, v_acc_dd, v_acc_cp, v_acc_cd
          FROM ledger.accounts c
         WHERE c.id IN (SELECT t.debit_account_id FROM ledger.transfers t WHERE t.id = ANY (v_hold_ids)
                        UNION ALL
                        SELECT t.credit_account_id FROM ledger.transfers t WHERE t.id = ANY (v_hold_ids));
    END IF;
    -- the settled reservations' lines in (settlement, position) order, each with the index of its bucket row in
    -- the global lock order, of its slice (rolling) and of its window's total (rolling, when it alerts); none:
    -- credit holds only
    IF v_lined THEN
        WITH lines AS (
            SELECT x.ordinality::int AS request, y.ordinality AS pos, y.rule_id, y.key, y.window_start,
                   y.rolling_since, y.budget, y.alert_window, y.alert_at, y.unit,
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
                                     alert_at, unit)::limits.batch_line ORDER BY request, pos) FROM ranked),
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
                -- money: the estimate goes back and the actual cost counts; a rate limit's line gives back its 1 or
                -- its token bound and counts 1, or the tokens used (none given: the bound); nothing when expired
                IF line.unit IS NULL THEN
                    v_freed := v_release;
                    v_counted := v_actual;
                ELSE
                    v_freed := CASE WHEN v_answers[i].late THEN 0
                                    WHEN line.unit = 'requests' THEN 1 ELSE coalesce(v_settled[i].tokens, 0) END;
                    v_counted := CASE WHEN p_settlements[i].outcome = 'expired' THEN 0
                                      WHEN line.unit = 'requests' THEN 1
                                      ELSE coalesce(p_settlements[i].tokens, v_settled[i].tokens, 0) END;
                END IF;
                v_rows[line.bucket].pending := v_rows[line.bucket].pending - v_freed;
                v_total := NULL;
                IF line.slice IS NULL THEN
                    v_rows[line.bucket].spent := v_rows[line.bucket].spent + v_counted;
                    v_total := v_rows[line.bucket].spent;
                ELSIF v_counted > 0 THEN
                    v_slices[line.slice].spent := v_slices[line.slice].spent + v_counted;
                    FOR t IN 1..nt LOOP  -- every window total that counts this slice
                        IF v_totals[t].rule_id = v_slices[line.slice].rule_id
                           AND v_totals[t].key = v_slices[line.slice].key
                           AND v_totals[t].window_start <= v_slices[line.slice].window_start THEN
                            v_totals[t].spent := v_totals[t].spent + v_counted;
                        END IF;
                    END LOOP;
                    IF line.total IS NOT NULL THEN
                        v_total := v_totals[line.total].spent;
                    END IF;
                END IF;
                IF v_counted > 0 AND line.alert_at IS NOT NULL AND v_total IS NOT NULL THEN
                    FOREACH f IN ARRAY line.alert_at LOOP
                        IF v_total - v_counted < f * line.budget AND v_total >= f * line.budget THEN
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
    -- the credit holds, in the settlements' order (their rows are locked above), as `ledger.settle_hold` resolves
    -- them: post the actual cost (the rest is released), or void or expire the hold. In memory, written together;
    -- a hold that is no longer open (the sweeper expired it: a late settlement is billed as an unheld debit) or a
    -- cost above the hold (the excess is billed) goes to `ledger.settle_hold` itself, after what the settlements
    -- before it changed is written, and the accounts are read again after it.
    FOR i IN 1..k LOOP
        CONTINUE WHEN v_settled[i].hold_id IS NULL;
        s := p_settlements[i];
        v_kind := CASE WHEN s.actual > 0 THEN 'post' WHEN s.outcome = 'expired' THEN 'expire' ELSE 'void' END;
        o := array_position(v_oh_id, v_settled[i].hold_id);
        IF o IS NULL OR s.actual > v_oh_amount[o] THEN
            PERFORM ledger.write_settlements(v_acc_id, v_acc_dp, v_acc_dd, v_acc_cp, v_acc_cd, v_t_id, v_t_debit,
                                             v_t_credit, v_t_amount, v_t_kind, v_t_pending, v_t_request, v_t_at,
                                             v_u_tenant, v_u_hour, v_u_spent);
            v_t_id := '{}'; v_t_debit := '{}'; v_t_credit := '{}'; v_t_amount := '{}'; v_t_kind := '{}';
            v_t_pending := '{}'; v_t_request := '{}'; v_t_at := '{}';
            v_u_tenant := '{}'; v_u_hour := '{}'; v_u_spent := '{}';
            v_answers[i].hold := ledger.settle_hold(v_settled[i].hold_id, s.actual, v_kind, s.settled_at);
            SELECT array_agg(c.credits_posted - c.debits_posted - c.debits_pending ORDER BY x.n),
                   array_agg(0::bigint), array_agg(0::bigint), array_agg(0::bigint), array_agg(0::bigint)
              INTO v_acc_avail, v_acc_dp, v_acc_dd, v_acc_cp, v_acc_cd
              FROM unnest(v_acc_id) WITH ORDINALITY AS x(id, n) JOIN ledger.accounts c ON c.id = x.id;
            CONTINUE;
        END IF;
        a := array_position(v_acc_id, v_oh_debit[o]);
        u := array_position(v_acc_id, v_oh_credit[o]);
        v_post := CASE WHEN v_kind = 'post' THEN s.actual ELSE 0 END;  -- at most the hold, here
        v_acc_dp[a] := v_acc_dp[a] - v_oh_amount[o];
        v_acc_dd[a] := v_acc_dd[a] + v_post;
        v_acc_avail[a] := v_acc_avail[a] + v_oh_amount[o] - v_post;
        v_acc_cp[u] := v_acc_cp[u] - v_oh_amount[o];
        v_acc_cd[u] := v_acc_cd[u] + v_post;
        v_t_id := v_t_id || md5(v_oh_id[o]::text || ':' || v_kind)::uuid;
        v_t_debit := v_t_debit || v_oh_debit[o];
        v_t_credit := v_t_credit || v_oh_credit[o];
        v_t_amount := v_t_amount || CASE WHEN v_kind = 'post' THEN v_post ELSE v_oh_amount[o] END;
        v_t_kind := v_t_kind || v_kind;
        v_t_pending := v_t_pending || v_oh_id[o];
        v_t_request := v_t_request || v_oh_request[o];
        v_t_at := v_t_at || s.settled_at;
        IF v_kind = 'post' AND v_acc_limit[a] IS NOT NULL THEN
            v_u_tenant := v_u_tenant || v_oh_tenant[o];
            v_u_hour := v_u_hour || (date_trunc('hour', s.settled_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC');
            v_u_spent := v_u_spent || s.actual;
        END IF;
        v_answers[i].hold := jsonb_build_object('ok', true, 'kind', v_kind, 'posted', v_post,
                                                'released', v_oh_amount[o] - v_post, 'excess', NULL::jsonb,
                                                'available', v_acc_avail[a]);
    END LOOP;
    IF v_holds > 0 THEN
        PERFORM ledger.write_settlements(v_acc_id, v_acc_dp, v_acc_dd, v_acc_cp, v_acc_cd, v_t_id, v_t_debit,
                                         v_t_credit, v_t_amount, v_t_kind, v_t_pending, v_t_request, v_t_at,
                                         v_u_tenant, v_u_hour, v_u_spent);
    END IF;
    FOREACH v_answer IN ARRAY v_answers LOOP
        RETURN NEXT v_answer;
    END LOOP;
END $$;
'''


# what the downgrade restores: 0023's limits.reserve and limits.settle
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
    v_shard int;
    v_usage bigint;
    -- the credits accounts of the batch's holds, locked, and what the holds before change in them
    v_acc_id bigint[];
    v_acc_owner text[];
    v_acc_avail bigint[];
    v_acc_pending bigint[];
    v_acc_limit bigint[];
    v_acc_duration text[];
    v_acc_strategy text[];
    v_acc_threshold bigint[];
    v_acc_topup bigint[];
    v_acc_add bigint[];
    v_taken uuid[];  -- ids the ledger already has a transfer for
    -- the holds granted, written together at the end
    v_h_id uuid[] := '{}';
    v_h_account bigint[] := '{}';
    v_h_tenant text[] := '{}';
    v_h_amount bigint[] := '{}';
    v_h_request text[] := '{}';
    v_h_expires timestamptz[] := '{}';
    v_h_created timestamptz[] := '{}';
    v_amount bigint;
    v_limit_spent bigint;
    a int;
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
        SELECT array_agg(c.id ORDER BY c.id), array_agg(c.owner ORDER BY c.id),
               array_agg(c.credits_posted - c.debits_posted - c.debits_pending ORDER BY c.id),
               array_agg(c.debits_pending ORDER BY c.id), array_agg(c.spend_limit ORDER BY c.id),
               array_agg(c.spend_limit_duration ORDER BY c.id), array_agg(c.spend_limit_strategy ORDER BY c.id),
               array_agg(c.auto_topup_threshold ORDER BY c.id), array_agg(c.auto_topup_amount ORDER BY c.id),
               array_agg(0::bigint ORDER BY c.id)
          INTO v_acc_id, v_acc_owner, v_acc_avail, v_acc_pending, v_acc_limit, v_acc_duration, v_acc_strategy,
               v_acc_threshold, v_acc_topup, v_acc_add
          FROM (SELECT * FROM ledger.accounts
                 WHERE code = 'credits' AND shard = 0
                   AND owner IN (SELECT (x.hold).tenant FROM unnest(p_requests) x WHERE x.id = ANY (v_new))
                 ORDER BY id FOR UPDATE) c;
        SELECT id INTO v_usage FROM ledger.accounts WHERE code = 'usage' AND owner = '' AND shard = v_shard FOR UPDATE;
        v_taken := ARRAY(SELECT t.id FROM ledger.transfers t
                          WHERE t.id IN (SELECT x.id FROM unnest(p_requests) x
                                          WHERE (x.hold).tenant IS NOT NULL AND x.id = ANY (v_new)));
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
            -- the credit hold, as `ledger.hold` places it, against the accounts as the holds before left them
            a := array_position(v_acc_owner, (req.hold).tenant);
            v_amount := (req.hold).amount;
            IF a IS NULL OR v_amount IS NULL OR v_amount < 0 OR req.id = ANY (v_taken) THEN
                -- no such account, a bad amount, or an id the ledger already has (a replay of the same hold is
                -- granted): the ledger answers, and changes nothing
                v_credit := ledger.hold_at(v_shard, req.id, (req.hold).tenant, v_amount, req.expires_at,
                                           (req.hold).request_id, req.created_at);
                IF (v_credit->>'ok')::boolean THEN
                    v_credit := NULL;
                END IF;
            ELSE
                IF v_acc_limit[a] IS NOT NULL THEN
                    -- usage slices change only under the credits row's lock, held since the start
                    SELECT coalesce(sum(u.spent), 0) INTO v_limit_spent FROM ledger.usage_hourly u
                     WHERE u.tenant = (req.hold).tenant
                       AND u.hour >= ledger.limit_window_start(v_acc_duration[a], v_acc_strategy[a], req.created_at);
                END IF;
                IF v_acc_avail[a] < v_amount THEN
                    v_credit := jsonb_build_object('ok', false, 'reason', 'insufficient_credit',
                                                   'available', v_acc_avail[a]);
                ELSIF v_acc_limit[a] IS NOT NULL AND v_limit_spent + v_acc_pending[a] + v_amount > v_acc_limit[a] THEN
                    v_credit := jsonb_build_object('ok', false, 'reason', 'spending_limit', 'available', v_acc_avail[a],
                                                   'limit', v_acc_limit[a], 'spent', v_limit_spent,
                                                   'pending', v_acc_pending[a], 'duration', v_acc_duration[a],
                                                   'strategy', v_acc_strategy[a]);
                ELSE
                    v_acc_avail[a] := v_acc_avail[a] - v_amount;
                    v_acc_pending[a] := v_acc_pending[a] + v_amount;
                    v_acc_add[a] := v_acc_add[a] + v_amount;
                    v_h_id := v_h_id || req.id;
                    v_h_account := v_h_account || v_acc_id[a];
                    v_h_tenant := v_h_tenant || (req.hold).tenant;
                    v_h_amount := v_h_amount || v_amount;
                    v_h_request := v_h_request || (req.hold).request_id;
                    v_h_expires := v_h_expires || req.expires_at;
                    v_h_created := v_h_created || req.created_at;
                    IF v_acc_threshold[a] IS NOT NULL THEN
                        PERFORM ledger.auto_topup_on_crossing((req.hold).tenant, v_acc_avail[a] + v_amount,
                                                              v_acc_avail[a], v_acc_threshold[a], v_acc_topup[a],
                                                              req.created_at);
                    END IF;
                END IF;
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
    -- the granted holds, together: pending on the tenants' credits and on the usage shard, a pending transfer and
    -- an open hold each
    IF cardinality(v_h_id) > 0 THEN
        UPDATE ledger.accounts c SET debits_pending = c.debits_pending + d.amount
          FROM unnest(v_acc_id, v_acc_add) d(id, amount)
         WHERE c.id = d.id AND d.amount <> 0;
        UPDATE ledger.accounts SET credits_pending = credits_pending + (SELECT sum(x) FROM unnest(v_h_amount) x)
         WHERE id = v_usage;
        INSERT INTO ledger.transfers (id, debit_account_id, credit_account_id, amount, kind, code, expires_at,
                                      request_id, created_at)
        SELECT h.id, h.account, v_usage, h.amount, 'pending', 'usage', h.expires, h.request, h.created
          FROM unnest(v_h_id, v_h_account, v_h_amount, v_h_expires, v_h_request, v_h_created)
               AS h(id, account, amount, expires, request, created);
        INSERT INTO ledger.open_holds (hold_id, tenant, debit_account_id, credit_account_id, amount, request_id,
                                       expires_at)
        SELECT h.id, h.tenant, h.account, v_usage, h.amount, h.request, h.expires
          FROM unnest(v_h_id, v_h_tenant, v_h_account, v_h_amount, v_h_request, v_h_expires)
               AS h(id, tenant, account, amount, request, expires);
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
    v_hold_ids uuid[];
    v_row record;
    -- the open holds of the batch, locked
    v_oh_id uuid[];
    v_oh_tenant text[];
    v_oh_debit bigint[];
    v_oh_credit bigint[];
    v_oh_amount bigint[];
    v_oh_request text[];
    -- the accounts they move (credits, then usage shards), locked, and what the settlements change in them
    v_acc_id bigint[];
    v_acc_avail bigint[];
    v_acc_limit bigint[];
    v_acc_dp bigint[];
    v_acc_dd bigint[];
    v_acc_cp bigint[];
    v_acc_cd bigint[];
    -- what is written together (at the end, or before a settlement the ledger resolves itself)
    v_t_id uuid[] := '{}';
    v_t_debit bigint[] := '{}';
    v_t_credit bigint[] := '{}';
    v_t_amount bigint[] := '{}';
    v_t_kind text[] := '{}';
    v_t_pending uuid[] := '{}';
    v_t_request text[] := '{}';
    v_t_at timestamptz[] := '{}';
    v_u_tenant text[] := '{}';
    v_u_hour timestamptz[] := '{}';
    v_u_spent bigint[] := '{}';
    v_kind text;
    v_post bigint;
    o int;
    a int;
    u int;
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
    -- each reservation resolved at most once, all in one statement (the ids are distinct, so this is what one
    -- after the other would do): an open one gets its outcome
    FOR v_row IN
        UPDATE limits.reservations r SET settled_at = x.settled_at, actual = x.actual, outcome = x.outcome
          FROM unnest(p_settlements) WITH ORDINALITY AS x(id, actual, outcome, settled_at, n)
         WHERE r.id = x.id AND r.settled_at IS NULL
        RETURNING x.n, r AS res
    LOOP
        v_res := v_row.res;
        v_settled[v_row.n] := v_res;
        v_answers[v_row.n] := ROW(v_res.id, true, NULL, false, 0, NULL);
    END LOOP;
    -- the call ended after the sweeper expired its reservation (a stream longer than the TTL, or a database outage
    -- longer than it while the settlement waited): the call happened, so its cost is still recorded, once, as
    -- 'late'. Pending went back at expiry.
    FOR v_row IN
        UPDATE limits.reservations r SET actual = x.actual, outcome = 'late'
          FROM unnest(p_settlements) WITH ORDINALITY AS x(id, actual, outcome, settled_at, n)
         WHERE r.id = x.id AND r.outcome = 'expired' AND x.outcome <> 'expired'
        RETURNING x.n, r AS res
    LOOP
        v_res := v_row.res;
        v_settled[v_row.n] := v_res;
        v_answers[v_row.n] := ROW(v_res.id, true, NULL, true, 0, NULL);
    END LOOP;
    FOR i IN 1..k LOOP
        IF v_settled[i].id IS NOT NULL THEN
            v_holds := v_holds + (v_settled[i].hold_id IS NOT NULL)::int;
            v_lined := v_lined OR jsonb_array_length(v_settled[i].lines) > 0;
        ELSE
            v_answers[i] := ROW(p_settlements[i].id, false,
                                CASE WHEN EXISTS (SELECT 1 FROM limits.reservations WHERE id = p_settlements[i].id)
                                     THEN 'already settled' ELSE 'unknown reservation' END, false, 0, NULL);
        END IF;
    END LOOP;
    -- the ledger rows of the credit holds, before any bucket row (the global order: open holds, accounts, then
    -- buckets): the open holds in id order (the sweeper skips a locked one, it never waits for one), then the
    -- tenants' credits accounts in account id order, then the usage shards in id order. A hold's transfer names
    -- both accounts, also when the sweeper expired it (a late settlement bills the tenant).
    IF v_holds > 0 THEN
        v_hold_ids := ARRAY(SELECT x.hold_id FROM unnest(v_settled) x WHERE x.hold_id IS NOT NULL);
        SELECT array_agg(h.hold_id), array_agg(h.tenant), array_agg(h.debit_account_id),
               array_agg(h.credit_account_id), array_agg(h.amount), array_agg(h.request_id)
          INTO v_oh_id, v_oh_tenant, v_oh_debit, v_oh_credit, v_oh_amount, v_oh_request
          FROM (SELECT * FROM ledger.open_holds WHERE hold_id = ANY (v_hold_ids) ORDER BY hold_id FOR UPDATE) h;
        PERFORM 1 FROM ledger.accounts
         WHERE id IN (SELECT t.debit_account_id FROM ledger.transfers t WHERE t.id = ANY (v_hold_ids))
         ORDER BY id FOR UPDATE;
        PERFORM 1 FROM ledger.accounts
         WHERE id IN (SELECT t.credit_account_id FROM ledger.transfers t WHERE t.id = ANY (v_hold_ids))
         ORDER BY id FOR UPDATE;
        SELECT array_agg(c.id ORDER BY c.id),
               array_agg(c.credits_posted - c.debits_posted - c.debits_pending ORDER BY c.id),
               array_agg(c.spend_limit ORDER BY c.id), array_agg(0::bigint), array_agg(0::bigint), array_agg(0::bigint),
               array_agg(0::bigint)
          INTO v_acc_id, v_acc_avail, v_acc_limit, v_acc_dp, v_acc_dd, v_acc_cp, v_acc_cd
          FROM ledger.accounts c
         WHERE c.id IN (SELECT t.debit_account_id FROM ledger.transfers t WHERE t.id = ANY (v_hold_ids)
                        UNION ALL
                        SELECT t.credit_account_id FROM ledger.transfers t WHERE t.id = ANY (v_hold_ids));
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
    -- the credit holds, in the settlements' order (their rows are locked above), as `ledger.settle_hold` resolves
    -- them: post the actual cost (the rest is released), or void or expire the hold. In memory, written together;
    -- a hold that is no longer open (the sweeper expired it: a late settlement is billed as an unheld debit) or a
    -- cost above the hold (the excess is billed) goes to `ledger.settle_hold` itself, after what the settlements
    -- before it changed is written, and the accounts are read again after it.
    FOR i IN 1..k LOOP
        CONTINUE WHEN v_settled[i].hold_id IS NULL;
        s := p_settlements[i];
        v_kind := CASE WHEN s.actual > 0 THEN 'post' WHEN s.outcome = 'expired' THEN 'expire' ELSE 'void' END;
        o := array_position(v_oh_id, v_settled[i].hold_id);
        IF o IS NULL OR s.actual > v_oh_amount[o] THEN
            PERFORM ledger.write_settlements(v_acc_id, v_acc_dp, v_acc_dd, v_acc_cp, v_acc_cd, v_t_id, v_t_debit,
                                             v_t_credit, v_t_amount, v_t_kind, v_t_pending, v_t_request, v_t_at,
                                             v_u_tenant, v_u_hour, v_u_spent);
            v_t_id := '{}'; v_t_debit := '{}'; v_t_credit := '{}'; v_t_amount := '{}'; v_t_kind := '{}';
            v_t_pending := '{}'; v_t_request := '{}'; v_t_at := '{}';
            v_u_tenant := '{}'; v_u_hour := '{}'; v_u_spent := '{}';
            v_answers[i].hold := ledger.settle_hold(v_settled[i].hold_id, s.actual, v_kind, s.settled_at);
            SELECT array_agg(c.credits_posted - c.debits_posted - c.debits_pending ORDER BY x.n),
                   array_agg(0::bigint), array_agg(0::bigint), array_agg(0::bigint), array_agg(0::bigint)
              INTO v_acc_avail, v_acc_dp, v_acc_dd, v_acc_cp, v_acc_cd
              FROM unnest(v_acc_id) WITH ORDINALITY AS x(id, n) JOIN ledger.accounts c ON c.id = x.id;
            CONTINUE;
        END IF;
        a := array_position(v_acc_id, v_oh_debit[o]);
        u := array_position(v_acc_id, v_oh_credit[o]);
        v_post := CASE WHEN v_kind = 'post' THEN s.actual ELSE 0 END;  -- at most the hold, here
        v_acc_dp[a] := v_acc_dp[a] - v_oh_amount[o];
        v_acc_dd[a] := v_acc_dd[a] + v_post;
        v_acc_avail[a] := v_acc_avail[a] + v_oh_amount[o] - v_post;
        v_acc_cp[u] := v_acc_cp[u] - v_oh_amount[o];
        v_acc_cd[u] := v_acc_cd[u] + v_post;
        v_t_id := v_t_id || md5(v_oh_id[o]::text || ':' || v_kind)::uuid;
        v_t_debit := v_t_debit || v_oh_debit[o];
        v_t_credit := v_t_credit || v_oh_credit[o];
        v_t_amount := v_t_amount || CASE WHEN v_kind = 'post' THEN v_post ELSE v_oh_amount[o] END;
        v_t_kind := v_t_kind || v_kind;
        v_t_pending := v_t_pending || v_oh_id[o];
        v_t_request := v_t_request || v_oh_request[o];
        v_t_at := v_t_at || s.settled_at;
        IF v_kind = 'post' AND v_acc_limit[a] IS NOT NULL THEN
            v_u_tenant := v_u_tenant || v_oh_tenant[o];
            v_u_hour := v_u_hour || (date_trunc('hour', s.settled_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC');
            v_u_spent := v_u_spent || s.actual;
        END IF;
        v_answers[i].hold := jsonb_build_object('ok', true, 'kind', v_kind, 'posted', v_post,
                                                'released', v_oh_amount[o] - v_post, 'excess', NULL::jsonb,
                                                'available', v_acc_avail[a]);
    END LOOP;
    IF v_holds > 0 THEN
        PERFORM ledger.write_settlements(v_acc_id, v_acc_dp, v_acc_dd, v_acc_cp, v_acc_cd, v_t_id, v_t_debit,
                                         v_t_credit, v_t_amount, v_t_kind, v_t_pending, v_t_request, v_t_at,
                                         v_u_tenant, v_u_hour, v_u_spent);
    END IF;
    FOREACH v_answer IN ARRAY v_answers LOOP
        RETURN NEXT v_answer;
    END LOOP;
END $$;
'''


def upgrade() -> None:
    run_script(TYPES)
    run_script(RESERVE)
    run_script(SETTLE)


def downgrade() -> None:
    run_script(PREVIOUS_TYPES)
    run_script(PREVIOUS_RESERVE)
    run_script(PREVIOUS_SETTLE)
