"""Where an analytics query reads its rows: the narrow rollups, the metadata rollups, or the log itself.

The rollups (gateway/analytics/schema.py, migration 0025) are kept by statement-level triggers on `request_logs`
in the log statement's own transaction, so a query's snapshot sees a log row and its share of the rollups
together or not at all: the sums equal the log at every moment.

A query's time range [from, to) is read in pieces (`segments`): whole days from a daily rollup, whole hours from
an hourly one, and the partial hours at either edge from `request_logs` itself (a BRIN index on `created_at`),
so that any range, aligned or not, sums exactly the log rows whose `created_at` falls inside it.

Which rollup (`source`): the narrow ones (`hourly`, `daily`) whenever the query needs no metadata; the metadata
ones when it needs one client metadata key and, besides, at most the gateway (the requests without that key are
the narrow rollup's sums less the key's values'); otherwise the log rows of the whole range.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Table = Literal["weekly", "daily", "hourly", "raw"]

SUM_COLUMNS = ("requests", "errors", "tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write",
               "cost_nano")

# A log row as the rollups hold it (the expressions of migration 0025's triggers).
RAW_COLUMNS = {
    "at": "created_at",
    "gateway_id": "gateway_id", "provider": "provider", "model": "model", "billing_mode": "billing_mode",
    "status_code": "status_code",
    "user_id": "nullif(identity->>'user_id', '')",
    "email": "nullif(identity->>'email', '')",
    "groups": "CASE WHEN jsonb_typeof(identity->'groups') IS DISTINCT FROM 'array' OR identity->'groups' = '[]'::jsonb "
              "THEN NULL "
              "WHEN jsonb_array_length(identity->'groups') = 1 THEN ARRAY[identity->'groups'->>0] "
              "ELSE ARRAY(SELECT DISTINCT g FROM jsonb_array_elements_text(identity->'groups') AS g ORDER BY 1) END",
    "service_token": "nullif(identity->>'service_token', '')",
    # the metadata (cf.* keys included, as spend-limit rules see it): read from the log only
    "metadata": "metadata",
    "requests": "1::bigint", "errors": "(NOT success)::int::bigint",
    "tokens_in": "coalesce(tokens_in, 0)::bigint", "tokens_out": "coalesce(tokens_out, 0)::bigint",
    "tokens_cache_read": "coalesce(tokens_cache_read, 0)::bigint",
    "tokens_cache_write": "coalesce(tokens_cache_write, 0)::bigint",
    "cost_nano": "(coalesce(cost_usd, 0) * 1000000000)::bigint",
    "cost_usd": "coalesce(cost_usd, 0)::numeric",
}
# The same in a rollup row (a sum over its rows).
ROLLUP_COLUMNS = {name: name for name in RAW_COLUMNS} | {"at": "start", "cost_usd": "cost_nano * 0.000000001"}
SUMMABLE = frozenset(SUM_COLUMNS) | {"cost_usd"}
NARROW_DIMENSIONS = ("gateway_id", "provider", "model", "billing_mode", "status_code", "user_id", "email", "groups",
                     "service_token")


@dataclass(frozen=True)
class Segment:
    """The rows of one table between `start` and `end`, added (`sign` 1) or subtracted (-1)."""

    table: Table
    start: datetime
    end: datetime
    sign: int = 1


HOUR, DAY, WEEK = timedelta(hours=1), timedelta(days=1), timedelta(days=7)
_FINER: dict[Table, Table] = {"weekly": "daily", "daily": "hourly"}


def _floor(at: datetime, step: timedelta) -> datetime:
    if step == HOUR:
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if step == DAY else day - timedelta(days=day.weekday())  # ISO weeks start on Monday (UTC)


def _ceil(at: datetime, step: timedelta) -> datetime:
    floor = _floor(at, step)
    return floor if floor == at else floor + step


def _level(start: datetime, end: datetime, table: Table, step: timedelta) -> list[Segment]:
    """[start, end), both on the finer table's boundaries, from `table` (buckets of `step`) and the finer table:
    whole buckets from `table` (first, as one piece); a partial bucket at either edge from the finer table, or as
    its whole bucket (in that first piece) less the finer rows of the rest of it, whichever reads fewer finer
    buckets."""
    finer = _FINER[table]
    b1, b2 = _ceil(start, step), _floor(end, step)
    if b1 > b2:  # inside one bucket
        return [Segment(finer, start, end)]
    out = []
    c1, c2 = b1, b2
    if start < b1:
        if (b1 - start) <= (start - (b1 - step)):
            out.append(Segment(finer, start, b1))
        else:
            c1 = b1 - step
            out.append(Segment(finer, c1, start, -1))
    if b2 < end:
        if (end - b2) <= (b2 + step - end):
            out.append(Segment(finer, b2, end))
        else:
            c2 = b2 + step
            out.append(Segment(finer, end, c2, -1))
    return ([Segment(table, c1, c2)] if c1 < c2 else []) + out


def segments(start: datetime, end: datetime, *, daily: bool = True, weekly: bool = False) -> list[Segment]:
    """[start, end) (UTC) in pieces read from the log and the rollups, some subtracted. `daily=False`: hours only
    (an hourly series); `weekly`: whole ISO weeks from the weekly rollup (not for a daily series)."""
    if end <= start:
        return []
    h1, h2 = _ceil(start, HOUR), _floor(end, HOUR)
    if h1 >= h2:
        return [Segment("raw", start, end)]
    out = [Segment("raw", start, h1)] if start < h1 else []
    if daily:
        days = _level(h1, h2, "daily", DAY)
        if weekly:
            expanded = []
            for seg in days:
                if seg.table == "daily" and seg.sign == 1 and seg.end - seg.start > DAY:
                    expanded += _level(seg.start, seg.end, "weekly", WEEK)
                else:
                    expanded.append(seg)
            days = expanded
        out += days
    else:
        out.append(Segment("hourly", h1, h2))
    if h2 < end:
        out.append(Segment("raw", h2, end))
    return _cancelled(out)


def _cancelled(pieces: list[Segment]) -> list[Segment]:
    """`pieces` without the pairs that add and subtract the same rows (a day a partial day's complement adds and a
    partial week's complement subtracts)."""
    out: list[Segment] = []
    for piece in pieces:
        opposite = Segment(piece.table, piece.start, piece.end, -piece.sign)
        if opposite in out:
            out.remove(opposite)
        else:
            out.append(piece)
    return out


def segment_sql(segment: Segment, columns: list[str], where: str, start: str, end: str) -> str:
    """One segment's rows: `columns` (names of RAW_COLUMNS) for the account and filter `where` (on the narrow
    rollup's column names, valid on the log too) between the placeholders `start` and `end`. A segment that needs
    `metadata` is read from the log."""
    if segment.table == "raw" or "metadata" in columns:
        select = ", ".join(f"{RAW_COLUMNS[c]} AS {c}" for c in columns)
        return f"SELECT {select} FROM request_logs WHERE {where} AND created_at >= {start} AND created_at < {end}"
    sign = "-" if segment.sign < 0 else ""
    select = ", ".join(f"{sign}{ROLLUP_COLUMNS[c]} AS {c}" if c in SUMMABLE else f"{ROLLUP_COLUMNS[c]} AS {c}"
                       for c in columns)
    return f"SELECT {select} FROM analytics.{segment.table} WHERE {where} AND start >= {start} AND start < {end}"


# -- filtered sources ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """Rows kept: each filter set must match (the names and semantics of the logs API's filters)."""

    gateway: str | None = None
    provider: str | None = None
    model: str | None = None
    status_code: int | None = None
    user_id: str | None = None
    email: str | None = None
    group: str | None = None
    service_token: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()  # (key, value): the value as text (`metadata->>key`), cf.* included

    def narrow(self) -> dict[str, Any]:
        """The filters on the narrow rollup's dimensions (gateway aside): column -> value."""
        return {name: value for name in ("provider", "model", "status_code", "user_id", "email", "service_token")
                if (value := getattr(self, name)) is not None}


Path = Literal["narrow", "metadata", "raw"]


def path_for(filters: Filters, columns: list[str], metadata_key: str | None) -> Path:
    """Which tables answer: `columns` the dimension columns needed besides `at` and the sums ("meta" for the value of
    `metadata_key`)."""
    keys = {k for k, _ in filters.metadata} | ({metadata_key} if metadata_key is not None else set())
    if "metadata" in columns:
        return "raw"
    if not keys:
        return "narrow"
    if (len(keys) == 1 and not next(iter(keys)).startswith("cf.") and set(columns) <= {"gateway_id", "meta"}
            and not filters.narrow() and filters.group is None and len(filters.metadata) <= 1):
        return "metadata"
    return "raw"


class _Args:
    def __init__(self, args: list[Any]) -> None:
        self.args = args

    def add(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


def _where(kind: Literal["rollup", "raw", "metadata"], filters: Filters, p: _Args, account: str,
           metadata_key: str | None) -> str:
    out = [f"account_id = {p.add(account)}"]
    if filters.gateway is not None:
        out.append(f"gateway_id = {p.add(filters.gateway)}")
    if kind == "metadata":
        assert metadata_key is not None
        out.append(f"key = {p.add(metadata_key)}")
        for _, value in filters.metadata:
            out.append(f"value #>> '{{}}' = {p.add(value)}")
        return " AND ".join(out)
    col = RAW_COLUMNS if kind == "raw" else ROLLUP_COLUMNS
    for name, value in filters.narrow().items():
        out.append(f"{col[name]} = {p.add(value)}")
    if filters.group is not None:
        if kind == "raw":  # as the logs API: a string element of identity.groups
            out.append(f"jsonb_exists(identity->'groups', {p.add(filters.group)})")
        else:
            out.append(f"{p.add(filters.group)} = ANY(groups)")
    if kind == "raw":
        for key, value in filters.metadata:
            out.append(_metadata_match(key, value, p))
    return " AND ".join(out)


def _metadata_match(key: str, value: str, p: _Args) -> str:
    """`metadata->>key = value`, with a containment test the GIN index on `metadata` can answer first: every row
    whose value reads as `value` holds it as that string or as the JSON it parses as."""
    candidates: list[Any] = [{key: value}]
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = None
    if parsed is not None and not isinstance(parsed, str):
        candidates.append({key: parsed})
    contains = " OR ".join(f"metadata @> {p.add(c)}::jsonb" for c in candidates)
    return f"({contains}) AND metadata->>{p.add(key)}::text = {p.add(value)}"


_STEPS = {"hour": HOUR, "day": DAY, "week": WEEK}
_TABLE_STEPS: dict[Table, timedelta] = {"hourly": HOUR, "daily": DAY, "weekly": WEEK}


def source(account: str, start: datetime, end: datetime, filters: Filters, columns: list[str],
           metadata_key: str | None, args: list[Any], *, daily: bool = True, weekly: bool = False,
           interval: Literal["hour", "day", "week"] | None = None) -> str:
    """The rows of [start, end) kept by `filters`, as one UNION ALL with the columns `at`, `columns` (narrow
    dimension names, and "meta": the value of `metadata_key`, JSON null as none) and the sums SUM_COLUMNS (some
    rows subtracted: their sums negative). `daily=False`: no piece coarser than an hour; `weekly=False`: none
    coarser than a day. With `interval`, `at` is the start of the UTC hour, day or ISO week the row falls in
    (`date_trunc(interval, at, 'UTC')`), computed per row only where needed: a rollup of that interval's own
    buckets has it as `start`, and a piece inside one bucket (the partial hours or days at the edges) has it as a
    constant. The placeholders are appended to `args`."""
    p = _Args(args)
    path = path_for(filters, columns, metadata_key)
    parts = []

    def at(table: Table, lo: datetime, hi: datetime, column: str) -> str:
        if interval is None:
            return column
        step = _STEPS[interval]
        if table != "raw" and _TABLE_STEPS[table] == step:
            return column
        first = _floor(lo.astimezone(UTC), step)
        if hi <= first + step:
            return f"{p.add(first)}::timestamptz"
        return f"date_trunc({p.add(interval)}::text, {column}, 'UTC')"

    def raw(lo: datetime, hi: datetime) -> str:
        where = _where("raw", filters, p, account, metadata_key)
        select = [f"{at('raw', lo, hi, 'created_at')} AS at"]
        for c in columns:
            if c == "meta":
                select.append(f"nullif(metadata -> {p.add(metadata_key)}::text, 'null'::jsonb) AS meta")
            else:
                select.append(f"{RAW_COLUMNS[c]} AS {c}")
        select += [f"{RAW_COLUMNS[s]} AS {s}" for s in SUM_COLUMNS]
        return (f"SELECT {', '.join(select)} FROM request_logs WHERE {where} "
                f"AND created_at >= {p.add(lo)} AND created_at < {p.add(hi)}")

    if path == "raw":
        return raw(start, end) if start < end else raw(start, start)
    for seg in segments(start, end, daily=daily, weekly=weekly and path == "narrow"):
        if seg.table == "raw":
            parts.append(raw(seg.start, seg.end))
            continue
        plus, minus = ("", "-") if seg.sign > 0 else ("-", "")
        lo, hi = p.add(seg.start), p.add(seg.end)
        bucket = at(seg.table, seg.start, seg.end, "start")
        if path == "narrow":
            where = _where("rollup", filters, p, account, metadata_key)
            select = ", ".join([f"{bucket} AS at", *columns, *(f"{plus}{s}" for s in SUM_COLUMNS)])
            parts.append(f"SELECT {select} FROM analytics.{seg.table} WHERE {where} "
                         f"AND start >= {lo} AND start < {hi}")
            continue
        # metadata: the key's values; without a filter on it, the requests without it too (all less the values)
        key = metadata_key if metadata_key is not None else filters.metadata[0][0]
        where = _where("metadata", filters, p, account, key)

        def pick(meta: str, sign: str, bucket: str = bucket) -> str:
            return ", ".join([f"{bucket} AS at", *(f"{meta} AS meta" if c == "meta" else c for c in columns),
                              *(f"{sign}{s}" for s in SUM_COLUMNS)])

        parts.append(f"SELECT {pick('value', plus)} FROM analytics.{seg.table}_metadata "
                     f"WHERE {where} AND start >= {lo} AND start < {hi}")
        if not filters.metadata:
            parts.append(f"SELECT {pick('NULL::jsonb', minus)} FROM analytics.{seg.table}_metadata "
                         f"WHERE {where} AND start >= {lo} AND start < {hi}")
            narrow = _where("rollup", filters, p, account, key)
            parts.append(f"SELECT {pick('NULL::jsonb', plus)} FROM analytics.{seg.table} "
                         f"WHERE {narrow} AND start >= {lo} AND start < {hi}")
    if not parts:  # an empty range
        return raw(start, start)
    return "\nUNION ALL\n".join(parts)
