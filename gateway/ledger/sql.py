"""The ledger's SQL, as the code uses it: the invariant queries and the sweeper's query.

The SQL functions themselves (`ledger.hold`, `ledger.settle_hold`, …) are written by the migrations, and only
there: 0002_ledger installed them, later migrations replace them (0018_ledger_functions_caught_up holds today's
`ledger.hold`); to change one, add a migration. What they do: each hold and each settlement is one call,
so one round trip; inside, the statements that touch the tenant's hot credits row come as late as possible and
are guarded UPDATEs (no exception on the hot path), so the row is locked for the shortest time.

Lock order, everywhere: the tenant's credits row, then the tenant's receivable row, then platform rows (usage
shards, funding). Nothing locks two tenants' rows in one transaction, so nothing can deadlock.

Functions return jsonb: `{"ok": true, ...}` or `{"ok": false, "reason": ..., ...}`; a replay of an id with the
same fields returns the original outcome with `"replay": true`; with different fields, reason `id_conflict`.
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
