"""The rollups' one writer besides the triggers: compaction. And the rows a query reads, from the right table.

Compaction folds the hourly deltas (rows the triggers on `request_logs` wrote) into one merged hourly row and one
daily row per key, in one statement: a query's snapshot sees either the deltas or what they became, never both,
so its sums stay equal to the log at every moment. One compaction runs at a time (an advisory lock); several
instances may all try.

A query's time range [from, to) is read in pieces (`segments`): whole days from `daily` (plus the deltas of those
days not compacted yet), whole hours from `hourly`, and the partial hours at either edge from `request_logs`
itself, so that any range, aligned or not, sums exactly the log rows whose `created_at` falls inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gateway.analytics.schema import DIMENSIONS, SUMS
from gateway.db import Database

COMPACTION_LOCK = 0x414E414C59  # "ANALY"
COMPACTION_BATCH = 50_000

_DIMS = ", ".join(DIMENSIONS)
_ADD = ", ".join(f"{s} = t.{s} + EXCLUDED.{s}" for s in SUMS)
_SUMS = ", ".join(f"sum({s})" for s in SUMS)

COMPACT = f"""
WITH moved AS (
    DELETE FROM analytics.hourly
     WHERE ctid = ANY(ARRAY(SELECT ctid FROM analytics.hourly WHERE NOT merged ORDER BY start LIMIT $1))
    RETURNING *
), hours AS (
    INSERT INTO analytics.hourly AS t (account_id, start, dims, merged, {_DIMS}, {", ".join(SUMS)})
    SELECT account_id, start, dims, true, {_DIMS}, {_SUMS} FROM moved
     GROUP BY account_id, start, dims, {_DIMS} ORDER BY account_id, start, dims
    ON CONFLICT (account_id, start, dims) WHERE merged DO UPDATE SET {_ADD}
    RETURNING 1
), days AS (
    INSERT INTO analytics.daily AS t (account_id, start, dims, {_DIMS}, {", ".join(SUMS)})
    SELECT account_id, date_trunc('day', start, 'UTC'), dims, {_DIMS}, {_SUMS} FROM moved
     GROUP BY account_id, date_trunc('day', start, 'UTC'), dims, {_DIMS} ORDER BY 1, 2, 3
    ON CONFLICT (account_id, start, dims) DO UPDATE SET {_ADD}
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM hours) AS hours,
       (SELECT count(*) FROM days) AS days
"""


async def compact(db: Database, batch: int = COMPACTION_BATCH) -> int:
    """Fold deltas into merged rows until none are left (at most `batch` per transaction). Returns how many
    deltas were folded; 0 also when another compaction holds the lock."""
    folded = 0
    while True:
        async with db.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", COMPACTION_LOCK):
                return folded
            row = await conn.fetchrow(COMPACT, batch)
        folded += int(row["moved"])
        if row["moved"] < batch:
            return folded


# -- what a query reads ----------------------------------------------------------------------------------------

Table = Literal["daily", "hourly", "raw"]

# A log row as the rollups hold it (the same expressions as the triggers of migration 0021).
RAW_COLUMNS = {
    "at": "created_at",
    "gateway_id": "gateway_id", "provider": "provider", "model": "model", "billing_mode": "billing_mode",
    "status_code": "status_code",
    "user_id": "nullif(identity->>'user_id', '')",
    "email": "nullif(identity->>'email', '')",
    "groups": "CASE WHEN jsonb_typeof(identity->'groups') = 'array' AND identity->'groups' <> '[]'::jsonb "
              "THEN identity->'groups' END",
    "service_token": "nullif(identity->>'service_token', '')",
    "metadata": "CASE WHEN jsonb_typeof(metadata) = 'object' THEN metadata - ARRAY['cf.user_id', 'cf.user.email', "
                "'cf.user.groups', 'cf.service_token'] ELSE '{}'::jsonb END",
    "requests": "1::bigint", "errors": "(NOT success)::int::bigint",
    "tokens_in": "coalesce(tokens_in, 0)::bigint", "tokens_out": "coalesce(tokens_out, 0)::bigint",
    "tokens_cache_read": "coalesce(tokens_cache_read, 0)::bigint",
    "tokens_cache_write": "coalesce(tokens_cache_write, 0)::bigint",
    "cost_usd": "coalesce(cost_usd, 0)::numeric",
}


@dataclass(frozen=True)
class Segment:
    table: Table
    start: datetime
    end: datetime


def _ceil(at: datetime, step: timedelta) -> datetime:
    floor = _floor(at, step)
    return floor if floor == at else floor + step


def _floor(at: datetime, step: timedelta) -> datetime:
    if step == timedelta(hours=1):
        return at.replace(minute=0, second=0, microsecond=0)
    return at.replace(hour=0, minute=0, second=0, microsecond=0)


def segments(start: datetime, end: datetime, *, daily: bool = True) -> list[Segment]:
    """[start, end) (UTC) in pieces read from the log, the hourly and the daily rollups. `daily=False`: no daily
    piece (an hourly series)."""
    hour, day = timedelta(hours=1), timedelta(days=1)
    if end <= start:
        return []
    h1, h2 = _ceil(start, hour), _floor(end, hour)
    if h1 >= h2:
        return [Segment("raw", start, end)]
    out = [Segment("raw", start, h1)] if start < h1 else []
    d1, d2 = _ceil(h1, day), _floor(h2, day)
    if daily and d1 < d2:
        if h1 < d1:
            out.append(Segment("hourly", h1, d1))
        out.append(Segment("daily", d1, d2))
        if d2 < h2:
            out.append(Segment("hourly", d2, h2))
    else:
        out.append(Segment("hourly", h1, h2))
    if h2 < end:
        out.append(Segment("raw", h2, end))
    return out


def segment_sql(segment: Segment, columns: list[str], where: str, start: str, end: str) -> str:
    """One segment's rows: `columns` (names of RAW_COLUMNS) for the account and filter `where` (on the rollup
    column names, valid on the log too) between the placeholders `start` and `end`."""
    if segment.table == "raw":
        select = ", ".join(f"{RAW_COLUMNS[c]} AS {c}" for c in columns)
        return f"SELECT {select} FROM request_logs WHERE {where} AND created_at >= {start} AND created_at < {end}"
    select = ", ".join("start AS at" if c == "at" else c for c in columns)
    sql = f"SELECT {select} FROM analytics.{segment.table} WHERE {where} AND start >= {start} AND start < {end}"
    if segment.table == "daily":  # the deltas of those days that are not compacted yet
        sql += (f" UNION ALL SELECT {select} FROM analytics.hourly WHERE NOT merged AND {where} "
                f"AND start >= {start} AND start < {end}")
    return sql
