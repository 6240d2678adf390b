"""Old rate-limit buckets go: a rate limit keeps one bucket row per key and interval (fixed) or slice (sliding),
so a one-second limit would leave 86,400 rows a day per key. Spend-limit buckets stay: they are the spend of
past windows.

`prune_rate_buckets` deletes, for every rate limit the gateways have now, the rows that can no longer count, with
nothing pending: a fixed interval that started more than one interval ago (it is over), a sliding slice that
started more than one interval and one slice ago (a sliding window counts from the slice `now - interval` falls
in). A sliding limit's head row (its pending, at
`-infinity`) stays. Rows of rate limits that no longer exist (a rule removed or changed: its id changes) go once
they are older than the longest interval allowed. A row deleted while a settlement of a late call still names it
is skipped by that settlement (`limits.settle` writes only the rows it finds), which is what an interval that
ended means anyway.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from gateway.db import Database, rows_affected
from gateway.limits.rate_rules import MAX_INTERVAL_S, rules_of

_PRUNE = """
DELETE FROM limits.buckets b
 USING unnest($1::uuid[], $2::interval[]) AS r(rule_id, keep)
 WHERE b.rule_id = r.rule_id AND b.window_start > '-infinity' AND b.window_start < $3::timestamptz - r.keep
   AND b.pending = 0
"""

# rows of rules that are neither a spend rule nor one of today's rate limits, past any interval
_PRUNE_GONE = """
DELETE FROM limits.buckets b
 WHERE b.window_start > '-infinity' AND b.window_start < $2::timestamptz - $3::interval AND b.pending = 0
   AND b.rule_id <> ALL ($1::uuid[]) AND NOT EXISTS (SELECT 1 FROM limits.rules r WHERE r.id = b.rule_id)
"""


async def prune_rate_buckets(db: Database, now: datetime) -> int:
    """Delete the rate-limit bucket rows that can no longer count; returns how many went."""
    rows = await db.pool.fetch(
        "SELECT account_id, id, settings->'rate_limits' AS rate_limits FROM gateways "
        "WHERE jsonb_typeof(settings->'rate_limits') = 'array' AND jsonb_array_length(settings->'rate_limits') > 0")
    ids: list[uuid.UUID] = []
    keep: list[timedelta] = []
    for row in rows:
        for rule in rules_of(row["account_id"], row["id"], row["rate_limits"]):
            ids.append(uuid.UUID(rule.id))
            # fixed: the interval is over; sliding: the slice is before the one `now - interval` falls in
            keep.append(rule.interval.length + (rule.interval.slice_length if rule.interval.sliding else timedelta()))
    deleted = 0
    if ids:
        deleted += rows_affected(await db.pool.execute(_PRUNE, ids, keep, now))
    longest = timedelta(seconds=MAX_INTERVAL_S) * 2
    deleted += rows_affected(await db.pool.execute(_PRUNE_GONE, ids, now, longest))
    return deleted
