"""Spend-limit invariants as queries (with the ledger's in gateway/ledger/invariants.py, checked by every
concurrency test, the cluster and fault tests, and bench/soak.py):

- a bucket's `pending` is exactly what the open reservations with a line in it took: their estimates (money), 1
  each (a rate limit counting requests) or their token bounds (counting tokens);
- a settled reservation has its actual cost and outcome; an open one has neither;
- a reservation with a credit hold is open exactly while its hold is open.
"""

from __future__ import annotations

from gateway.db import Database

INVARIANTS = {
    "bucket pending equals the open reservations in it": """
        WITH open_lines AS (
            SELECT (l->>'rule_id')::uuid AS rule_id, l->>'key' AS key,
                   CASE WHEN l ? 'rolling_since' THEN '-infinity'::timestamptz
                        ELSE (l->>'window_start')::timestamptz END AS window_start,
                   CASE l->>'unit' WHEN 'requests' THEN 1 WHEN 'tokens' THEN coalesce(r.tokens, 0)
                                   ELSE r.estimate END AS estimate
              FROM limits.reservations r, jsonb_array_elements(r.lines) l
             WHERE r.settled_at IS NULL)
        SELECT b.rule_id, b.key, b.window_start, b.pending, coalesce(sum(o.estimate), 0) AS open
          FROM limits.buckets b LEFT JOIN open_lines o USING (rule_id, key, window_start)
         GROUP BY b.rule_id, b.key, b.window_start, b.pending
        HAVING b.pending <> coalesce(sum(o.estimate), 0)
    """,
    "a reservation is settled with an actual cost, or open with none": """
        SELECT id FROM limits.reservations
         WHERE (settled_at IS NULL) <> (actual IS NULL) OR (settled_at IS NULL) <> (outcome IS NULL)
    """,
    "a reservation's credit hold is open exactly while the reservation is": """
        SELECT r.id FROM limits.reservations r
         WHERE r.hold_id IS NOT NULL
           AND (r.settled_at IS NULL) <> EXISTS (SELECT 1 FROM ledger.open_holds h WHERE h.hold_id = r.hold_id)
    """,
}


async def check_limit_invariants(db: Database) -> list[str]:
    violations = []
    async with db.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        for name, query in INVARIANTS.items():
            rows = await conn.fetch(query)
            if rows:
                violations.append(f"{name}: {[dict(r) for r in rows[:5]]}")
    return violations


async def assert_all_invariants(db: Database) -> None:
    """The ledger's invariants and the spend limits' together."""
    from gateway.ledger.invariants import check_invariants

    violations = await check_invariants(db) + await check_limit_invariants(db)
    assert not violations, "invariants violated:\n" + "\n".join(violations)
