"""Reads of the bucket rows, outside the reservation functions: what a rule's buckets hold for the admin API, what
one bucket has left for a dynamic route's budget element, and when a refused request's bucket will have room.

The rows (gateway/limits/schema.py): a fixed window's row holds `spent` and `pending`; a rolling bucket has a head
row at `window_start = -infinity` that holds `pending`, and one row per slice holding `spent` (the slices from the
window's `counted_since` on count).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from gateway.db import Database
from gateway.limits.rate_rules import RateRule
from gateway.limits.reservations import BucketState
from gateway.limits.rules import Rule


async def bucket_status(db: Database, rule: Rule, now: datetime) -> list[dict[str, Any]]:
    """The rule's buckets in the current window: spent, pending and remaining (nano-USD), for the admin API."""
    rolling = rule.window.type == "rolling"
    since = rule.window.counted_since(now)  # a fixed window's start
    rows = await _counted(db, rule.id, since, rolling)
    return [_bucket(rule, r["key"], since, r["spent"], r["pending"]) for r in rows
            if not rolling or r["spent"] or r["pending"]]


async def _counted(db: Database, rule_id: str, since: datetime, rolling: bool) -> list[Any]:
    """(key, spent, pending) of each of a rule's buckets: a fixed window's row at `since`; a rolling (sliding)
    one's slices from `since` on and its head row's pending. In key order."""
    if not rolling:
        return await db.pool.fetch(  # type: ignore[no-any-return]
            "SELECT key, spent, pending FROM limits.buckets WHERE rule_id = $1 AND window_start = $2 ORDER BY key",
            uuid.UUID(rule_id), since)
    return await db.pool.fetch(  # type: ignore[no-any-return]
        """
        SELECT key,
               coalesce(sum(spent) FILTER (WHERE window_start >= $2), 0)::bigint AS spent,
               coalesce(sum(pending) FILTER (WHERE window_start = '-infinity'), 0)::bigint AS pending
          FROM limits.buckets WHERE rule_id = $1 GROUP BY key ORDER BY key
        """,
        uuid.UUID(rule_id), since)


async def rate_status(db: Database, rule: RateRule, now: datetime) -> list[dict[str, Any]]:
    """A rate limit's buckets now: what each counts in its interval (requests or tokens), what requests in flight
    hold, what is left of the limit, and when some of it frees (a fixed interval's end; a sliding one's oldest
    slice leaving). Only buckets that count something."""
    interval = rule.interval
    since = interval.counted_since(now)
    rows = await _counted(db, rule.id, since, interval.sliding)
    frees_at = interval.frees_at(now)
    return [{"key": json.loads(r["key"]), "window_start": since, "counted": r["spent"], "pending": r["pending"],
             "remaining": max(0, rule.limit - r["spent"] - r["pending"]), "frees_at": frees_at}
            for r in rows if r["spent"] or r["pending"]]


def _bucket(rule: Rule, key: str, start: datetime, spent: int, pending: int) -> dict[str, Any]:
    return {"key": json.loads(key), "window_start": start, "spent_nano": spent, "pending_nano": pending,
            "remaining_nano": rule.budget_nano - spent - pending}


async def bucket_remaining(db: Database, rule: Rule, key: str, now: datetime) -> int:
    """What one bucket has left now (budget - spent - pending), for a dynamic route's budget element."""
    window = rule.window
    if window.type == "fixed":
        row = await db.pool.fetchrow(
            "SELECT spent, pending FROM limits.buckets WHERE rule_id = $1 AND key = $2 AND window_start = $3",
            uuid.UUID(rule.id), key, window.start(now))
        used = 0 if row is None else row["spent"] + row["pending"]
    else:
        used = await db.pool.fetchval(
            """SELECT coalesce(sum(spent) FILTER (WHERE window_start >= $3), 0)
                    + coalesce(sum(pending) FILTER (WHERE window_start = '-infinity'), 0)
                 FROM limits.buckets WHERE rule_id = $1 AND key = $2""",
            uuid.UUID(rule.id), key, window.counted_since(now))
    return rule.budget_nano - int(used)


async def room_at(db: Database, state: BucketState, estimate_nano: int, now: datetime) -> datetime:
    """When the bucket of a refused request will have room for its estimate (a rate limit's line: for what it
    takes): a fixed window's end; for a rolling (sliding) one, when enough of its slices have aged out (holds that
    may settle for less sooner are not counted)."""
    line, rule = state.line, state.line.rule
    window = rule.interval if isinstance(rule, RateRule) else rule.window
    if line.rolling_since is None:
        return window.end(now)
    rows = await db.pool.fetch(
        "SELECT window_start, spent FROM limits.buckets WHERE rule_id = $1 AND key = $2 AND window_start >= $3 "
        "ORDER BY window_start",
        uuid.UUID(rule.id), line.key, line.rolling_since,
    )
    needed = state.spent_nano + state.pending_nano + estimate_nano - line.budget
    return window.retry_after(now, [(r["window_start"], r["spent"]) for r in rows], max(needed, 1))
