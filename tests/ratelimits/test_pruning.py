"""Old rate-limit buckets are deleted by the sweeper (gateway/limits/pruning.py): rows that can no longer count go,
the current interval, the sliding window's slices and head, anything pending and every spend-limit bucket stay."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from gateway.db import Database
from gateway.limits.pruning import prune_rate_buckets
from gateway.limits.rate_rules import rules_of, validate

NOW = datetime(2026, 12, 10, 12, 0, 30, tzinfo=UTC)
FIXED = {"name": "fixed", "limit": 5, "interval_s": 60}
SLIDING = {"name": "sliding", "limit": 5, "interval_s": 600, "technique": "sliding"}


async def test_the_sweeper_deletes_what_can_no_longer_count(db: Database) -> None:
    account = f"prune-{uuid.uuid4().hex[:8]}"
    setting = validate([FIXED, SLIDING])
    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", account)
    await db.pool.execute("INSERT INTO gateways (account_id, id, settings) VALUES ($1, 'g', $2::jsonb)",
                          account, {"rate_limits": setting})
    fixed, sliding = (uuid.UUID(r.id) for r in rules_of(account, "g", setting))
    gone_rule = uuid.uuid4()  # a rate limit that was removed (or a deleted spend rule)
    spend_rule = await db.pool.fetchval(
        "INSERT INTO limits.rules (account_id, gateway_id, spec) VALUES ($1, 'g', '{}') RETURNING id", account)
    minute = NOW.replace(second=0)
    rows = {
        # fixed, 60 s: this minute stays; the one before can no longer count, nor older ones
        (fixed, minute): False, (fixed, minute - timedelta(minutes=1)): True,
        (fixed, minute - timedelta(hours=3)): True,
        # sliding, 600 s in slices of 60 s: slices within the last 10 minutes (and one more) stay
        (sliding, datetime.min.replace(tzinfo=UTC)): False,  # stands for the head (-infinity), written below
        (sliding, minute - timedelta(minutes=9)): False, (sliding, minute - timedelta(minutes=10)): False,
        (sliding, minute - timedelta(minutes=12)): True,
        # a rule nobody has any more: old rows go, recent ones wait (its id may be a rule just created elsewhere)
        (gone_rule, minute - timedelta(days=90)): True, (gone_rule, minute - timedelta(days=2)): False,
        # a spend rule's past windows are history
        (spend_rule, minute - timedelta(days=90)): False,
    }
    for (rule, start), _ in rows.items():
        await db.pool.execute(
            "INSERT INTO limits.buckets (rule_id, key, window_start, spent) VALUES ($1, '{}', "
            "CASE WHEN $2::timestamptz = '0001-01-01 00:00+00' THEN '-infinity' ELSE $2 END, 1)", rule, start)
    # something pending is never deleted, however old
    await db.pool.execute("INSERT INTO limits.buckets (rule_id, key, window_start, spent, pending) "
                          "VALUES ($1, 'busy', $2, 1, 1)", fixed, minute - timedelta(hours=5))

    try:
        await _prune_and_check(db, rows, fixed, sliding, gone_rule, spend_rule, minute)
    finally:  # the busy row has no reservation: it would break the invariants the other tests of this database check
        await db.pool.execute("DELETE FROM limits.buckets WHERE rule_id = ANY($1)",
                              [fixed, sliding, gone_rule, spend_rule])


async def _prune_and_check(db: Database, rows: dict[tuple[uuid.UUID, datetime], bool], fixed: uuid.UUID,
                           sliding: uuid.UUID, gone_rule: uuid.UUID, spend_rule: uuid.UUID, minute: datetime) -> None:
    deleted = await prune_rate_buckets(db, NOW)

    left = {(r["rule_id"], r["key"], r["window_start"]) for r in await db.pool.fetch(
        "SELECT rule_id, key, CASE WHEN window_start = '-infinity' THEN '0001-01-01 00:00+00' ELSE window_start END "
        "AS window_start FROM limits.buckets WHERE rule_id = ANY($1)", [fixed, sliding, gone_rule, spend_rule])}
    expected = {(rule, "{}", start) for (rule, start), goes in rows.items() if not goes}
    expected.add((fixed, "busy", minute - timedelta(hours=5)))
    assert left == expected
    assert deleted >= sum(rows.values())
    await prune_rate_buckets(db, NOW)  # a second sweep deletes nothing more of these
    assert {(r["rule_id"], r["key"], r["window_start"]) for r in await db.pool.fetch(
        "SELECT rule_id, key, CASE WHEN window_start = '-infinity' THEN '0001-01-01 00:00+00' ELSE window_start END "
        "AS window_start FROM limits.buckets WHERE rule_id = ANY($1)", [fixed, sliding, gone_rule, spend_rule])
    } == expected
