"""Spend by any dimension over a time range: totals, top groups with the rest summed as "other", time series.

Dimensions (`group_by`): `provider`, `model`, `gateway`, `billing_mode`, `status_code`, the identity fields
`cf.user_id`, `cf.user.email`, `cf.user.groups` (a request counts once in each of its groups; one without groups
counts in the `null` group) and `cf.service_token`, and `metadata.<key>` (the client's metadata). A group's
`key` maps each dimension to its value (null when the request had none). Groups are ordered by cost, then
requests, then key; past `limit`, the rest is summed into one group whose key is `{"other": true}`.

Every figure is an exact sum of the log rows in [start, end): see gateway/analytics/store.py for how the range is
read. Costs are numeric USD (unpriced requests count as 0).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from gateway.analytics.store import Filters, source
from gateway.db import Database
from gateway.errors import QueryError

Interval = Literal["hour", "day", "week"]
INTERVALS: tuple[Interval, ...] = ("hour", "day", "week")
STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}
MAX_DIMENSIONS = 6
MAX_LIMIT = 1000
MAX_POINTS = 20_000  # series buckets per query (e.g. 2 years of days; 830 days of hours is refused)
DEFAULT_DAYS = 30
WORK_MEM = "64MB"  # per sort or hash of one analytics query (in its own transaction only)

# dimension -> the rollup column it reads
COLUMNS = {"provider": "provider", "model": "model", "gateway": "gateway_id", "billing_mode": "billing_mode",
           "status_code": "status_code", "cf.user_id": "user_id", "cf.user.email": "email",
           "cf.user.groups": "groups", "cf.service_token": "service_token"}
DIMENSION_NAMES = (*COLUMNS, "metadata.<key>")
FIGURES = ("requests", "errors", "tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write", "cost_usd")


def parse_group_by(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    names = tuple(part.strip() for part in text.split(","))
    for name in names:
        if name.startswith("metadata."):
            key = name[len("metadata."):]
            if not key or len(key) > 200:
                raise QueryError("group_by", f"{name!r}: a metadata key is 1 to 200 characters")
            if key.startswith("cf."):
                raise QueryError("group_by", f"{name!r}: identity fields are dimensions of their own ({key})")
        elif name not in COLUMNS:
            raise QueryError("group_by", f"unknown dimension {name!r}; one of {', '.join(DIMENSION_NAMES)}")
    if len(set(names)) != len(names):
        raise QueryError("group_by", "a dimension is named twice")
    if len(names) > MAX_DIMENSIONS:
        raise QueryError("group_by", f"at most {MAX_DIMENSIONS} dimensions")
    return names


@dataclass(frozen=True)
class AnalyticsQuery:
    account: str
    start: datetime
    end: datetime
    gateway: str | None = None
    group_by: tuple[str, ...] = ()
    interval: Interval | None = None
    limit: int = 50
    filters: Filters = field(default_factory=Filters)  # the gateway is `gateway`, not filters.gateway

    def __post_init__(self) -> None:
        if self.filters.gateway != self.gateway:
            object.__setattr__(self, "filters", replace(self.filters, gateway=self.gateway))

    @classmethod
    def default_range(cls, now: datetime) -> tuple[datetime, datetime]:
        return now - timedelta(days=DEFAULT_DAYS), now

    def check(self) -> None:
        if self.end < self.start:
            raise QueryError("to", "to must not be earlier than from")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise QueryError("limit", f"limit must be between 1 and {MAX_LIMIT}")
        if self.interval is not None:
            points = (self.end - bucket_start(self.start, self.interval)) / STEP[self.interval]
            if points > MAX_POINTS:
                raise QueryError("interval", f"at most {MAX_POINTS} points per series: a longer interval or a "
                                             f"shorter range")


def bucket_start(at: datetime, interval: Interval) -> datetime:
    """The start of the UTC hour, day or ISO week (Monday) `at` falls in."""
    at = at.astimezone(UTC)
    if interval == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if interval == "day" else day - timedelta(days=day.weekday())


@dataclass
class Figures:
    requests: int = 0
    errors: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    tokens_cache_read: int = 0
    tokens_cache_write: int = 0
    cost_usd: Decimal = Decimal(0)

    def add(self, row: Any) -> None:
        for name in FIGURES:
            setattr(self, name, getattr(self, name) + row[name])

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: int(getattr(self, name)) for name in FIGURES[:-1]}
        out["cost_usd"] = usd(self.cost_usd)
        return out


def usd(amount: Decimal) -> str:
    """A sum of costs as the API's decimal string: exact, at least two decimals, no exponent."""
    text = format(amount.quantize(Decimal("0.000000001")), "f").rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


@dataclass
class Group:
    key: dict[str, Any]
    figures: Figures = field(default_factory=Figures)
    series: dict[datetime, Figures] | None = None


@dataclass
class Result:
    query: AnalyticsQuery
    totals: Figures
    groups: list[Group]

    def to_json(self) -> dict[str, Any]:
        q = self.query
        out: dict[str, Any] = {"from": iso(q.start), "to": iso(q.end), "interval": q.interval,
                               "totals": self.totals.to_json(), "groups": []}
        starts = series_starts(q) if q.interval else []
        for group in self.groups:
            item = {"key": group.key, **group.figures.to_json()}
            if group.series is not None:
                series = group.series
                item["series"] = [{"start": iso(at), **(series.get(at) or Figures()).to_json()} for at in starts]
            out["groups"].append(item)
        return out

    def to_csv(self) -> str:
        """One line per group (with an interval: per group and series point); key columns first, then `other`."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        q = self.query
        writer.writerow([*q.group_by, "other", *(["start"] if q.interval else []), *FIGURES])
        starts = series_starts(q) if q.interval else []
        for group in self.groups:
            other = bool(group.key.get("other")) and list(group.key) == ["other"]
            key = ["" if other else _cell(group.key.get(name)) for name in q.group_by]
            if group.series is None:
                writer.writerow([*key, "true" if other else "false", *_cells(group.figures)])
                continue
            for at in starts:
                figures = group.series.get(at) or Figures()
                writer.writerow([*key, "true" if other else "false", iso(at), *_cells(figures)])
        return buffer.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _cells(figures: Figures) -> list[str]:
    data = figures.to_json()
    return [str(data[name]) for name in FIGURES]


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def series_starts(q: AnalyticsQuery) -> list[datetime]:
    assert q.interval is not None
    out, at = [], bucket_start(q.start, q.interval)
    while at < q.end:
        out.append(at)
        at += STEP[q.interval]
    return out


# -- SQL -------------------------------------------------------------------------------------------------------


def _columns(q: AnalyticsQuery) -> tuple[list[str], str | None]:
    """The source columns the grouping needs, and the metadata key read as `meta` (one key: the metadata rollups
    may answer; several: the log's `metadata`)."""
    keys = [name[len("metadata."):] for name in q.group_by if name.startswith("metadata.")]
    columns: list[str] = []
    for name in q.group_by:
        column = ("meta" if len(keys) == 1 else "metadata") if name.startswith("metadata.") else COLUMNS[name]
        if column not in columns:
            columns.append(column)
    return columns, keys[0] if len(keys) == 1 else None


def _dimension_sql(name: str, columns: list[str], args: list[Any]) -> str:
    if name.startswith("metadata."):
        if "meta" in columns:
            return "s.meta"
        args.append(name[len("metadata."):])
        return f"nullif(s.metadata -> ${len(args)}::text, 'null'::jsonb)"
    if name == "cf.user.groups":
        return "grp.name"
    return f"s.{COLUMNS[name]}"


SUMMED = ("requests", "errors", "tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write", "cost_nano")
SUM_SQL = ", ".join(f"sum({f}) AS {f}" for f in SUMMED)
NONZERO = " OR ".join(f"sum({f}) <> 0" for f in SUMMED)


def _figures(row: Any) -> dict[str, Any]:
    out = {name: row[name] for name in FIGURES[:-1]}
    out["cost_usd"] = Decimal(int(row["cost_nano"])).scaleb(-9)
    return out


def build(q: AnalyticsQuery) -> tuple[str, list[Any], list[str]]:
    """The groups' statement, its arguments and the aliases of the group_by dimensions in its rows."""
    args: list[Any] = []
    columns, metadata_key = _columns(q)
    source_sql = source(q.account, q.start, q.end, q.filters, columns, metadata_key, args,
                        daily=q.interval != "hour", weekly=q.interval in (None, "week"), interval=q.interval)
    dims = [_dimension_sql(name, columns, args) for name in q.group_by]
    lateral = ""
    if "cf.user.groups" in q.group_by:
        # each group of the request once (the names are distinct); a request without groups in the null group
        lateral = "CROSS JOIN LATERAL unnest(coalesce(s.groups, ARRAY[NULL]::text[])) AS grp(name)"
    aliases = [f"d{i}" for i in range(len(dims))]
    bucket = "s.at" if q.interval else "NULL::timestamptz"  # with an interval, the source's `at` is the bucket
    args.append(q.limit)
    limit = f"${len(args)}"
    dim_select = "".join(f"{sql} AS {alias}, " for sql, alias in zip(dims, aliases, strict=True))
    dim_list = "".join(f"{alias}, " for alias in aliases)
    partition = f"PARTITION BY {', '.join(aliases)}" if aliases else ""
    kept = "".join(f"CASE WHEN rank <= {limit}::bigint THEN {alias} END AS {alias}, " for alias in aliases)
    if unsummed(q):
        return _series_sql(source_sql, dims, bucket, lateral, aliases, limit, _null_keys(q)), args, aliases
    sql = f"""
WITH s AS ({source_sql}),
base AS (
    SELECT {dim_select}{bucket} AS bucket, {SUM_SQL}
      FROM s {lateral}
     GROUP BY {dim_list}bucket
    HAVING {NONZERO}
), totals AS (
    SELECT *, sum(cost_nano) OVER w AS group_cost, sum(requests) OVER w AS group_requests FROM base
    WINDOW w AS ({partition})
), ranked AS (
    SELECT *, dense_rank() OVER (ORDER BY group_cost DESC, group_requests DESC{"".join(f", {a}" for a in aliases)})
           AS rank
      FROM totals
)
SELECT least(rank, {limit}::bigint + 1) AS slot, {kept}bucket, {SUM_SQL}
  FROM ranked
 GROUP BY {", ".join(str(i) for i in range(1, len(aliases) + 3))}
 ORDER BY slot, bucket
"""
    return sql, args, aliases


def unsummed(q: AnalyticsQuery) -> bool:
    """Whether a series is ranked and summed from its rows as read (`_series_sql`) rather than summed per group and
    bucket first: when a group's bucket holds about one rollup row, which is when the grouping fixes the user and
    the model (nearly the rollups' whole key: a user's gateway, provider and billing mode seldom vary) or the user
    and the hour. Summing those per group and bucket first keeps as many sums as rows, and ranking them sorts as
    many rows (bench/README.md, Analytics); for the other groupings it makes the rows fewer, and is faster."""
    per_user = "cf.user_id" in q.group_by or "cf.user.email" in q.group_by
    return q.interval is not None and per_user and ("model" in q.group_by or q.interval == "hour")


def _null_keys(q: AnalyticsQuery) -> list[str]:
    """Each dimension's stand-in for NULL, of its type, in the join of a series' rows to their group's rank."""
    return ["0" if name == "status_code" else "'null'::jsonb" if name.startswith("metadata.") else "''"
            for name in q.group_by]


def _series_sql(source_sql: str, dims: list[str], bucket: str, lateral: str, aliases: list[str], limit: str,
                null_keys: list[str]) -> str:
    """A series (see `unsummed`), the same rows as `build`'s other statement: each group's rank from its sums over
    the whole range (one row per group), then the rows read summed per slot and bucket (the groups past `limit` in
    the one slot after it). The groups are not summed per bucket, so the big aggregation keeps few sums (at most
    limit + 1 slots times the buckets) and only the groups are sorted, to rank them. A row finds its group's rank by
    a hash join on the dimensions (each as `IS NULL` and its value or a stand-in: NULL matches NULL, as in GROUP
    BY). The rows are read once (materialized) for both."""
    select = "".join(f"{sql} AS {alias}, " for sql, alias in zip(dims, aliases, strict=True))
    on = " AND ".join(f"(r.{a} IS NULL) = (x.{a} IS NULL) AND coalesce(r.{a}, {n}) = coalesce(x.{a}, {n})"
                      for a, n in zip(aliases, null_keys, strict=True))
    ranked = f"""totals AS (
    SELECT {", ".join(aliases)}, sum(cost_nano) AS cost, sum(requests) AS requests
      FROM x
     GROUP BY {", ".join(aliases)}
    HAVING {NONZERO}
), ranks AS (
    SELECT {", ".join(aliases)},
           dense_rank() OVER (ORDER BY cost DESC, requests DESC, {", ".join(aliases)}) AS rank
      FROM totals
), slots AS (
    SELECT least(r.rank, {limit}::bigint + 1) AS slot, x.bucket, {SUM_SQL}
      FROM x JOIN ranks r ON {on}
     GROUP BY 1, 2
    HAVING {NONZERO}
)"""
    kept = "".join(f"r.{alias}, " for alias in aliases)
    return f"""
WITH s AS ({source_sql}),
x AS MATERIALIZED (
    SELECT {select}{bucket} AS bucket, {", ".join(f"s.{f}" for f in SUMMED)}
      FROM s {lateral}
), {ranked}
SELECT a.slot, {kept}a.bucket, {", ".join(f"a.{f}" for f in SUMMED)}
  FROM slots a LEFT JOIN ranks r ON r.rank = a.slot AND r.rank <= {limit}::bigint
 ORDER BY a.slot, a.bucket
"""


async def run(db: Database, q: AnalyticsQuery) -> Result:
    q.check()
    sql, args, aliases = build(q)
    async with db.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # JIT compiling these plans costs more than it saves (a few hundred thousand rollup rows at most), and
        # the default work_mem (4 MB) spills their sorts to disk: both halve the time of a 30-day query grouped by
        # model and user (bench/README.md). One snapshot for the groups and the totals.
        await conn.execute(f"SET LOCAL jit = off; SET LOCAL work_mem = '{WORK_MEM}'")
        if unsummed(q):
            # such a series joins its rows to their groups' ranks: the planner, misjudging how many groups there are,
            # prefers a merge join, which sorts every row by its dimensions (more than half the time); hashed instead
            await conn.execute("SET LOCAL enable_mergejoin = off")
        rows = await conn.fetch(sql, *args)
        total = None
        if "cf.user.groups" in q.group_by:  # a request in two groups counts in both: the totals are summed apart
            total_args: list[Any] = []
            total_source = source(q.account, q.start, q.end, q.filters, [], None, total_args, weekly=True)
            total = await conn.fetchrow(f"SELECT {SUM_SQL} FROM ({total_source}) s", *total_args)
    groups: dict[int, Group] = {}
    for row in rows:
        slot = row["slot"]
        group = groups.get(slot)
        if group is None:
            key = ({"other": True} if slot > q.limit else
                   {name: row[alias] for name, alias in zip(q.group_by, aliases, strict=True)})
            group = groups[slot] = Group(key, series={} if q.interval else None)
        figures = _figures(row)
        group.figures.add(figures)
        if group.series is not None:
            group.series.setdefault(row["bucket"], Figures()).add(figures)
    ordered = [groups[slot] for slot in sorted(groups)]
    totals = Figures()
    if total is not None:
        if total["requests"] is not None:
            totals.add(_figures(total))
    else:
        for group in ordered:
            for name in FIGURES:
                setattr(totals, name, getattr(totals, name) + getattr(group.figures, name))
    return Result(q, totals, ordered)
