"""One reservation path: `limits.reserve(limits.bucket_line[], limits.reservation_request[])` and
`limits.settle(limits.settlement_request[])` replace both the one-by-one functions (jsonb lines, 0005/0011) and the
batched ones (jsonb in, parallel arrays inside, 0012). A single request is a batch of one. The adapters
`limits.place_hold` / `limits.settle_hold` (0007) go too: the new functions call `ledger.hold` /
`ledger.settle_hold` themselves.

The interface is typed (composite types), the answers are rows, in the order of the requests:

- `limits.bucket_line`: one bucket a request reserves in: (rule_id, key, window_start, rolling_since, budget,
  blocking, alert_window, alert_at). `window_start` is the fixed window, or the rolling slice the spend goes to;
  `rolling_since` (rolling only) is where the counted slices start; a monitor rule's line is not `blocking`.
- `limits.credit_hold`: (tenant, amount, request_id), a unified-billing credit hold placed with the reservation.
- `limits.reservation_request`: (id, estimate, created_at, expires_at, lines, hold): `lines` are the positions
  (from 1) of its bucket lines in the batch's `p_lines`. The requests of a batch mostly share their lines (one hot
  user's requests have the same ones), so each distinct line is sent, and encoded, once per batch.
- `limits.reservation_answer`: (id, ok, replay, state, exceeded, credit): `state` is each line's
  `limits.bucket_state` (spent, pending) before this request; `exceeded` the positions (from 1) of the blocking
  lines that would overflow; `credit` the ledger's refusal of the credit hold.
- `limits.settlement_request`: (id, actual, outcome, settled_at); `limits.settlement_answer`: (id, ok, reason,
  late, alerts, hold).

Semantics: those of the requests applied one after the other, in order, in one transaction.

- reserve: preconditions (refused with an exception, nothing kept): no id twice, at most one credit hold (a hold
  locks its tenant's ledger rows, which are outside the buckets' lock order: two holds in one transaction could
  deadlock with another), an estimate >= 0, every line position in `p_lines`. The reservation rows are inserted
  first, in id order; an id already there is a replay (`ok`, `replay`, nothing reserved again). Then every bucket
  row of the batch is locked, or created, once, in the global order (rule id, key in byte order, window start; a
  rolling bucket's row is its head at -infinity), and rolling windows' slices are summed under those locks. Each
  request is checked against the rows as the requests before it left them: `spent + pending + estimate <= budget`
  for every blocking line; then its credit hold, if any, is placed (`ledger.hold`). Granted: its estimate is added
  to every line's pending. Refused: nothing of it is kept (its reservation row is deleted).
- settle: preconditions: no id twice, actual >= 0. The reservation rows are locked first, in id order, and each
  is resolved at most once: an open one is settled with its outcome (`settled`, or `expired` from the sweeper);
  one the sweeper expired is recorded as `late` (its cost counts; its pending went back at expiry); anything else
  answers 'already settled' or 'unknown reservation'. Then the bucket rows are locked in the global order: pending
  goes back, the actual cost goes to `spent` (fixed) or to the slice (rolling); crossed `alert_at` fractions
  become alert rows (one per bucket, fraction and calendar window), found with running totals request by request.
  Last, the credit holds are settled (`ledger.settle_hold`: post the actual cost, void, or expire); at most one
  per batch, as for reserve.

Both lock bucket rows in the same global order, always after any reservation row and before any ledger row, so no
mix of them can deadlock. An instance of the previous version calls functions this migration drops: upgrade
every instance together.

Revision ID: 0017_one_reservation_path
Revises: 0016_settings_that_did_nothing
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0017_one_reservation_path"
down_revision = "0016_settings_that_did_nothing"
branch_labels = None
depends_on = None


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


DROP_OLD = """
DROP FUNCTION limits.reserve_many(jsonb);
DROP FUNCTION limits.settle_many(jsonb);
DROP FUNCTION limits.reserve(uuid, jsonb, bigint, timestamptz, timestamptz, jsonb);
DROP FUNCTION limits.settle(uuid, bigint, text, timestamptz);
DROP FUNCTION limits.place_hold(jsonb, timestamptz, timestamptz);
DROP FUNCTION limits.settle_hold(uuid, bigint, text, timestamptz);
"""

TYPES = """
CREATE TYPE limits.bucket_line AS (
    rule_id uuid,
    key text,
    window_start timestamptz,
    rolling_since timestamptz,
    budget bigint,
    blocking boolean,
    alert_window timestamptz,
    alert_at numeric[]
);
CREATE TYPE limits.credit_hold AS (tenant text, amount bigint, request_id text);
CREATE TYPE limits.reservation_request AS (
    id uuid,
    estimate bigint,
    created_at timestamptz,
    expires_at timestamptz,
    lines int[],
    hold limits.credit_hold
);
CREATE TYPE limits.bucket_state AS (spent bigint, pending bigint);
CREATE TYPE limits.reservation_answer AS (
    id uuid,
    ok boolean,
    replay boolean,
    state limits.bucket_state[],
    exceeded int[],
    credit jsonb
);
CREATE TYPE limits.settlement_request AS (id uuid, actual bigint, outcome text, settled_at timestamptz);
CREATE TYPE limits.settlement_answer AS (id uuid, ok boolean, reason text, late boolean, alerts int, hold jsonb);

-- what the two functions work on: a bucket row (locked; or a rolling slice, spent = what the batch adds to it; or a
-- rolling window's total, window_start = where it starts counting), and a request's line with the indexes of its
-- bucket row, slice and total in those arrays
CREATE TYPE limits.bucket_row AS (rule_id uuid, key text, window_start timestamptz, spent bigint, pending bigint);
CREATE TYPE limits.batch_line AS (
    request int,
    bucket int,
    slice int,
    total int,
    budget bigint,
    blocking boolean,
    alert_window timestamptz,
    alert_at numeric[]
);
"""

RESERVE = r"""
CREATE FUNCTION limits.reserve(p_lines limits.bucket_line[], p_requests limits.reservation_request[])
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
"""

SETTLE = r"""
CREATE FUNCTION limits.settle(p_settlements limits.settlement_request[])
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
"""


def upgrade() -> None:
    run_script(DROP_OLD)
    run_script(TYPES)
    run_script(RESERVE)
    run_script(SETTLE)


def downgrade() -> None:
    run_script(
        """
        DROP FUNCTION limits.reserve(limits.bucket_line[], limits.reservation_request[]);
        DROP FUNCTION limits.settle(limits.settlement_request[]);
        DROP TYPE limits.batch_line, limits.bucket_row, limits.settlement_answer, limits.settlement_request,
                  limits.reservation_answer, limits.bucket_state, limits.reservation_request, limits.credit_hold,
                  limits.bucket_line;
        """
    )
    run_script(PREVIOUS)


# The functions this migration replaces, as 0005/0007/0011/0012 left them, for the downgrade.
PREVIOUS = r"""
        CREATE FUNCTION limits.place_hold(p_hold jsonb, p_now timestamptz, p_expires_at timestamptz)
        RETURNS jsonb LANGUAGE sql AS $$
            SELECT ledger.hold((p_hold->>'hold_id')::uuid, p_hold->>'tenant', (p_hold->>'amount')::bigint,
                               p_expires_at, p_hold->>'request_id', p_now)
        $$;
        CREATE FUNCTION limits.settle_hold(p_hold_id uuid, p_actual bigint, p_outcome text, p_now timestamptz)
        RETURNS jsonb LANGUAGE sql AS $$
            SELECT ledger.settle_hold(p_hold_id, p_actual,
                                      CASE WHEN p_actual > 0 THEN 'post'
                                           WHEN p_outcome = 'expired' THEN 'expire' ELSE 'void' END, p_now)
        $$;

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
