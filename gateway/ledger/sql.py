"""The ledger's SQL functions (installed by migration 0002_ledger). Each hold and each settlement is one call,
so one round trip; inside, the statements that touch the tenant's hot credits row come as late as possible and
are guarded UPDATEs (no exception on the hot path), so the row is locked for the shortest time.

Lock order, everywhere: the tenant's credits row, then the tenant's receivable row, then platform rows (usage
shards, funding). Nothing locks two tenants' rows in one transaction, so nothing can deadlock.

Functions return jsonb: `{"ok": true, ...}` or `{"ok": false, "reason": ..., ...}`; a replay of an id with the
same fields returns the original outcome with `"replay": true`; with different fields, reason `id_conflict`.
"""

FUNCTIONS = r"""
CREATE FUNCTION ledger.limit_window_start(p_duration text, p_strategy text, p_now timestamptz)
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

-- Queue one auto top-up when the available balance crossed the threshold downwards (at most one pending).
CREATE FUNCTION ledger.auto_topup_on_crossing(p_tenant text, p_before bigint, p_after bigint,
                                              p_threshold bigint, p_amount bigint, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_threshold IS NOT NULL AND p_before >= p_threshold AND p_after < p_threshold THEN
        INSERT INTO ledger.auto_topups (tenant, amount, created_at)
        VALUES (p_tenant, p_amount, p_now)
        ON CONFLICT (tenant) WHERE state = 'pending' DO NOTHING;
    END IF;
END $$;

CREATE FUNCTION ledger.open_tenant(p_tenant text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v_id bigint;
BEGIN
    INSERT INTO ledger.accounts (code, owner, debits_must_not_exceed_credits) VALUES ('credits', p_tenant, true)
    ON CONFLICT (code, owner, shard) DO NOTHING;
    INSERT INTO ledger.accounts (code, owner) VALUES ('receivable', p_tenant)
    ON CONFLICT (code, owner, shard) DO NOTHING;
    SELECT id INTO v_id FROM ledger.accounts WHERE code = 'credits' AND owner = p_tenant AND shard = 0;
    RETURN v_id;
END $$;

-- A single (immediately posted) transfer: top-ups, auto top-ups, refunds, adjustments.
CREATE FUNCTION ledger.transfer(p_id uuid, p_debit bigint, p_credit bigint, p_amount bigint, p_code text,
                                p_request_id text, p_now timestamptz)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    t ledger.transfers%ROWTYPE;
    d record;
BEGIN
    IF p_amount <= 0 THEN
        RETURN jsonb_build_object('ok', false, 'reason', 'invalid_amount');
    END IF;
    SELECT * INTO t FROM ledger.transfers WHERE id = p_id;
    IF FOUND THEN
        IF t.kind = 'single' AND t.debit_account_id = p_debit AND t.credit_account_id = p_credit
           AND t.amount = p_amount AND t.code = p_code THEN
            RETURN jsonb_build_object('ok', true, 'replay', true, 'created_at', t.created_at);
        END IF;
        RETURN jsonb_build_object('ok', false, 'reason', 'id_conflict');
    END IF;
    PERFORM 1 FROM ledger.accounts WHERE id IN (p_debit, p_credit)
      ORDER BY (code = 'credits') DESC, (code = 'receivable') DESC, id FOR UPDATE;
    UPDATE ledger.accounts SET debits_posted = debits_posted + p_amount
     WHERE id = p_debit
       AND (NOT debits_must_not_exceed_credits OR debits_posted + debits_pending + p_amount <= credits_posted)
    RETURNING owner, code, credits_posted - debits_posted - debits_pending AS available,
              auto_topup_threshold, auto_topup_amount INTO d;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('ok', false, 'reason',
            CASE WHEN EXISTS (SELECT 1 FROM ledger.accounts WHERE id = p_debit)
                 THEN 'insufficient_credit' ELSE 'unknown_account' END);
    END IF;
    UPDATE ledger.accounts SET credits_posted = credits_posted + p_amount WHERE id = p_credit;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown credit account %', p_credit;
    END IF;
    INSERT INTO ledger.transfers (id, debit_account_id, credit_account_id, amount, kind, code, request_id, created_at)
    VALUES (p_id, p_debit, p_credit, p_amount, 'single', p_code, p_request_id, p_now);
    IF d.code = 'credits' THEN
        PERFORM ledger.auto_topup_on_crossing(d.owner, d.available + p_amount, d.available,
                                              d.auto_topup_threshold, d.auto_topup_amount, p_now);
    END IF;
    RETURN jsonb_build_object('ok', true, 'created_at', p_now);
END $$;

-- Place a hold (pending transfer) on a tenant's credits for a unified-billing request.
CREATE FUNCTION ledger.hold(p_id uuid, p_tenant text, p_amount bigint, p_expires_at timestamptz,
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

-- Bill usage that no hold covers (cost above the hold, or a settlement after the hold expired): from the
-- tenant's credits while they cover it, otherwise the whole amount goes to the tenant's receivable account.
CREATE FUNCTION ledger.bill_unheld(p_id uuid, p_tenant text, p_usage bigint, p_amount bigint, p_request_id text,
                                   p_now timestamptz)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_debit bigint;
    d record;
    v_code text := 'credits';
BEGIN
    INSERT INTO ledger.transfers (id, debit_account_id, credit_account_id, amount, kind, code, request_id, created_at)
    VALUES (p_id, 0, p_usage, p_amount, 'single', 'usage', p_request_id, p_now)
    ON CONFLICT (id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('billed', 0, 'replay', true);
    END IF;
    UPDATE ledger.accounts SET debits_posted = debits_posted + p_amount
     WHERE code = 'credits' AND owner = p_tenant AND shard = 0
       AND debits_posted + debits_pending + p_amount <= credits_posted
    RETURNING id, credits_posted - debits_posted - debits_pending AS available,
              auto_topup_threshold, auto_topup_amount INTO d;
    IF FOUND THEN
        v_debit := d.id;
        PERFORM ledger.auto_topup_on_crossing(p_tenant, d.available + p_amount, d.available,
                                              d.auto_topup_threshold, d.auto_topup_amount, p_now);
    ELSE
        v_code := 'receivable';
        INSERT INTO ledger.accounts AS r (code, owner, debits_posted) VALUES ('receivable', p_tenant, p_amount)
        ON CONFLICT (code, owner, shard) DO UPDATE SET debits_posted = r.debits_posted + p_amount
        RETURNING id INTO v_debit;
    END IF;
    UPDATE ledger.accounts SET credits_posted = credits_posted + p_amount WHERE id = p_usage;
    UPDATE ledger.transfers SET debit_account_id = v_debit WHERE id = p_id;
    RETURN jsonb_build_object('billed', p_amount, 'from', v_code);
END $$;

-- Resolve a hold: p_kind 'post' (actual cost; the rest is released, an excess is billed), 'void' or 'expire'.
CREATE FUNCTION ledger.settle_hold(p_hold_id uuid, p_actual bigint, p_kind text, p_now timestamptz)
RETURNS jsonb LANGUAGE plpgsql AS $$
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
END $$;

-- The sweeper: expire the most overdue open hold that nobody else is resolving right now (one per call,
-- so one transaction holds one tenant's row; several sweepers never wait for each other).
CREATE FUNCTION ledger.expire_next(p_now timestamptz) RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE v_id uuid;
BEGIN
    SELECT hold_id INTO v_id FROM ledger.open_holds WHERE expires_at <= p_now
     ORDER BY expires_at LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN ledger.settle_hold(v_id, 0, 'expire', p_now) || jsonb_build_object('hold_id', v_id);
END $$;
"""

# Ledger checks every concurrency test ends with (the ledger invariants). Each query returns the rows
# that violate its invariant; an empty result means it holds.
INVARIANTS = {
    "transfer has two different accounts and a non-negative amount": """
        SELECT id FROM ledger.transfers WHERE debit_account_id = credit_account_id OR amount < 0
    """,
    "total debits equal total credits (posted, pending)": """
        SELECT sum(debits_posted) - sum(credits_posted) AS posted, sum(debits_pending) - sum(credits_pending) AS pending
          FROM ledger.accounts
        HAVING sum(debits_posted) <> sum(credits_posted) OR sum(debits_pending) <> sum(credits_pending)
    """,
    "account counters equal the sums of their transfers": """
        WITH legs AS (
            SELECT debit_account_id AS account, amount AS dp, 0 AS cp, 0 AS dpe, 0 AS cpe
              FROM ledger.transfers WHERE kind IN ('single', 'post')
            UNION ALL
            SELECT credit_account_id, 0, amount, 0, 0 FROM ledger.transfers WHERE kind IN ('single', 'post')
            UNION ALL
            SELECT debit_account_id, 0, 0, amount, 0 FROM ledger.transfers t
             WHERE kind = 'pending' AND NOT EXISTS (SELECT 1 FROM ledger.transfers r WHERE r.pending_id = t.id)
            UNION ALL
            SELECT credit_account_id, 0, 0, 0, amount FROM ledger.transfers t
             WHERE kind = 'pending' AND NOT EXISTS (SELECT 1 FROM ledger.transfers r WHERE r.pending_id = t.id)
        ), sums AS (
            SELECT account, sum(dp) dp, sum(cp) cp, sum(dpe) dpe, sum(cpe) cpe FROM legs GROUP BY account
        )
        SELECT a.id, a.code, a.owner FROM ledger.accounts a LEFT JOIN sums s ON s.account = a.id
         WHERE a.debits_posted <> coalesce(s.dp, 0) OR a.credits_posted <> coalesce(s.cp, 0)
            OR a.debits_pending <> coalesce(s.dpe, 0) OR a.credits_pending <> coalesce(s.cpe, 0)
        UNION ALL
        SELECT s.account, NULL, NULL FROM sums s WHERE NOT EXISTS (SELECT 1 FROM ledger.accounts a WHERE a.id = s.account)
    """,
    "no flagged account below zero": """
        SELECT id, owner FROM ledger.accounts
         WHERE debits_must_not_exceed_credits AND debits_posted + debits_pending > credits_posted
    """,
    "each hold resolved at most once, and open exactly while unresolved": """
        SELECT pending_id FROM ledger.transfers WHERE pending_id IS NOT NULL GROUP BY pending_id HAVING count(*) > 1
        UNION ALL
        SELECT t.id FROM ledger.transfers t WHERE t.kind = 'pending'
           AND (EXISTS (SELECT 1 FROM ledger.transfers r WHERE r.pending_id = t.id))
             = (EXISTS (SELECT 1 FROM ledger.open_holds o WHERE o.hold_id = t.id))
        UNION ALL
        SELECT o.hold_id FROM ledger.open_holds o
         WHERE NOT EXISTS (SELECT 1 FROM ledger.transfers t WHERE t.id = o.hold_id AND t.kind = 'pending')
    """,
    "a resolution posts no more than its hold": """
        SELECT r.id FROM ledger.transfers r JOIN ledger.transfers h ON h.id = r.pending_id
         WHERE h.kind <> 'pending' OR r.amount > h.amount OR (r.kind <> 'post' AND r.amount <> h.amount)
            OR r.debit_account_id <> h.debit_account_id OR r.credit_account_id <> h.credit_account_id
    """,
}

OVERDUE_HOLDS = "SELECT hold_id FROM ledger.open_holds WHERE expires_at <= $1"
