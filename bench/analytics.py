"""Analytics at scale: N log rows (default 10 million over 60 days) in a throwaway database, then the p50/p95 of
analytics queries over the last 30 days, the storage of the log and of the rollups, what the rollup trigger costs
the log writer, and the forecast's error on generated traffic with a trend and a weekly cycle.

    TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres python -m bench.analytics \
        [--rows 10000000] [--days 60] [--users 500] [--runs 20] [--keep]
    TEST_DATABASE_URL=... python -m bench.analytics --database URL --now ISO [--runs 20]

The rows are generated in Postgres (generate_series), a quarter of a day per statement, in time order as a log
fills; the rollups are kept by migration 0025's statement-level trigger as they are written (each statement is one
batch). For speed the log's own indexes are dropped while it fills and built again after (the same definitions).
The trigger's cost is measured apart, through the gateway's log writer, with the trigger on and off in the same
run. The database is dropped at the end, also on failure or Ctrl-C; with `--keep` it is kept (the writer's cost is
not measured, so the log stays as generated) and its URL and `now` printed, for `--database URL --now ISO` to time
the queries again on the same rows (no generation, nothing dropped) or to EXPLAIN them.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/analytics.py` works as `-m` does

from gateway.analytics.forecast import fit
from gateway.analytics.queries import AnalyticsQuery, _columns, run
from gateway.analytics.store import Filters, path_for
from gateway.db import Database, migrate
from gateway.logs.schema import COLUMNS
from gateway.logs.writer import _JSONB, INSERT, LogWriter, _json_text
from harness.pg import database_beside

ACCOUNT = "bench"
MODELS = ["gpt-4o", "gpt-4o-mini", "o3", "o4-mini", "claude-opus-4.7", "claude-sonnet-4.5", "claude-haiku-4.5",
          "gemini-2.5-pro", "gemini-2.5-flash", "grok-4", "llama-3.3-70b", "qwen-3-32b"]
PARTS_PER_DAY = 4


# A slice of a day of traffic, in time order: users skewed (a few heavy, many light), 12 models, 3 gateways, some
# errors, metadata (team, feature) and groups that follow the user, both billing modes, a service token on
# requests without a user.
SLICE_SQL = """
INSERT INTO request_logs (id, account_id, gateway_id, created_at, provider, model, path, status_code, success,
                          tokens_in, tokens_out, cost_usd, billing_mode, identity, metadata)
SELECT gen_random_uuid(), $1, (ARRAY['default', 'prod', 'batch'])[1 + u % 3], at,
       CASE WHEN m < 4 THEN 'openai' WHEN m < 7 THEN 'anthropic' WHEN m < 9 THEN 'google-ai-studio'
            WHEN m < 10 THEN 'grok' ELSE 'groq' END,
       ($4::text[])[1 + m], '/v1/chat/completions', s, s < 400, ti, to_, round((ti * 0.0000025 + to_ * 0.00001)
       * (1 + m % 4), 9), CASE WHEN u % 4 = 0 THEN 'unified' ELSE 'byok' END,
       CASE WHEN u % 50 = 7 THEN jsonb_build_object('user_id', NULL, 'email', NULL, 'groups', '[]'::jsonb,
                                                     'service_token', 'ci-' || (u % 3))
            ELSE jsonb_build_object('user_id', 'user-' || u, 'email', 'user-' || u || '@example.com',
                          'groups', CASE u % 5 WHEN 0 THEN '["eng","ml"]'::jsonb WHEN 1 THEN '["eng"]'::jsonb
                                              WHEN 2 THEN '["sales"]'::jsonb ELSE '[]'::jsonb END,
                          'service_token', NULL) END,
       jsonb_build_object('team', 'team-' || (u % 25), 'feature', (ARRAY['chat', 'search', 'summary', 'agent',
                          'eval', 'batch'])[1 + (u + m) % 6], 'cf.user_id', 'user-' || u)
  FROM (SELECT $2::timestamptz + random() * $6::interval AS at, floor($5 * power(random(), 3))::int AS u,
               floor(12 * power(random(), 1.5))::int AS m,
               CASE WHEN random() < 0.97 THEN 200 WHEN random() < 0.5 THEN 429 ELSE 502 END AS s,
               (50 + random() * 4000)::int AS ti, (random() * 800)::int AS to_
          FROM generate_series(1, $3)) g
 ORDER BY at
"""


async def generate(db: Database, rows: int, days: int, users: int, now: datetime) -> None:
    slices = days * PARTS_PER_DAY
    per_slice = math.ceil(rows / slices)
    step = timedelta(days=1) / PARTS_PER_DAY
    first = now - timedelta(days=days)  # up to now: the partial hours of a query's edges hold rows
    async with db.pool.acquire() as conn:
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'request_logs'"
            " AND indexname <> 'pk_request_logs'")
        await conn.execute("ALTER TABLE request_logs DROP CONSTRAINT pk_request_logs")
        for index in indexes:
            await conn.execute(f"DROP INDEX {index['indexname']}")
        started = time.perf_counter()
        written = 0
        for i in range(slices):
            count = min(per_slice, rows - written)
            if count <= 0:
                break
            await conn.execute(SLICE_SQL, ACCOUNT, first + i * step, count, MODELS, users, step, timeout=3600)
            written += count
            if i % (10 * PARTS_PER_DAY) == 10 * PARTS_PER_DAY - 1:
                print(f"  {written:,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
        print(f"  {written:,} rows and their rollups in {time.perf_counter() - started:.0f} s", flush=True)
        started = time.perf_counter()
        await conn.execute("ALTER TABLE request_logs ADD CONSTRAINT pk_request_logs PRIMARY KEY (id)", timeout=3600)
        for index in indexes:
            await conn.execute(index["indexdef"], timeout=3600)
        for table in ("request_logs", "analytics.hourly", "analytics.daily", "analytics.weekly",
                      "analytics.hourly_metadata", "analytics.daily_metadata"):
            await conn.execute(f"VACUUM ANALYZE {table}", timeout=3600)
        print(f"  indexes built and tables vacuumed in {time.perf_counter() - started:.0f} s", flush=True)


def load() -> str:
    try:
        return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


CASES: list[tuple[str, str | None, dict[str, Any], int]] = [
    # group_by, interval, filters, runs divisor (the log-read cases are slow: fewer runs)
    ("model", None, {}, 1),
    ("model,cf.user_id", None, {}, 1),
    ("model,cf.user_id", "day", {}, 1),
    ("model,cf.user_id", "week", {}, 1),
    ("cf.user_id", "hour", {}, 1),
    ("model", "day", {}, 1),
    ("cf.user_id", "week", {}, 1),
    ("cf.user.groups,model", None, {}, 1),
    ("metadata.team", None, {}, 1),
    ("metadata.team", "day", {}, 1),
    ("", "hour", {}, 1),
    ("cf.user_id", None, {"model": "gpt-4o", "status_code": 200}, 1),
    ("model", "day", {"metadata": (("team", "team-3"),)}, 4),
    ("metadata.team,model", None, {}, 10),
]


async def timings(db: Database, now: datetime, runs: int) -> None:
    start = now - timedelta(days=30)
    print(f"\n{load()} before the queries")
    print("\n| query (last 30 days) | reads | p50 ms | p95 ms | runs | groups |\n|---|---|---|---|---|---|")
    for group_by, interval, filters, divisor in CASES:
        query = AnalyticsQuery(ACCOUNT, start, now, None, tuple(g for g in group_by.split(",") if g),
                               interval, filters=Filters(**filters))  # type: ignore[arg-type]
        columns, key = _columns(query)
        reads = path_for(query.filters, columns, key)
        await run(db, query)  # warm
        spent = []
        n = max(3, runs // divisor)
        for _ in range(n):
            t = time.perf_counter()
            result = await run(db, query)
            result.to_json()
            spent.append((time.perf_counter() - t) * 1000)
        spent.sort()
        p95 = spent[min(len(spent) - 1, math.ceil(0.95 * len(spent)) - 1)]
        shown = f"group_by={group_by or '(none)'}{f' interval={interval}' if interval else ''}"
        shown += "".join(f" {k}={v}" for k, v in filters.items() if k != "metadata")
        shown += "".join(f" metadata.{k}={v}" for k, v in filters.get("metadata", ()))
        print(f"| {shown} | {reads} | {statistics.median(spent):,.0f} | {p95:,.0f} | {n} | {len(result.groups)} |",
              flush=True)
    print(f"\n{load()} after the queries")


async def storage(db: Database) -> None:
    rows = await db.pool.fetch(
        """
        SELECT n.nspname || '.' || c.relname AS name, pg_total_relation_size(c.oid) AS bytes,
               c.reltuples::bigint AS tuples
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE (n.nspname = 'public' AND c.relname = 'request_logs')
            OR (n.nspname = 'analytics' AND c.relkind = 'r')
         ORDER BY 2 DESC
        """)
    print("\n| table | rows | size with indexes |\n|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['tuples']:,} | {r['bytes'] / 2**20:,.0f} MiB |")


def _row(i: int, now: datetime) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update({"id": uuid.uuid4(), "account_id": "writer", "gateway_id": "default",
                "created_at": now - timedelta(seconds=i), "provider": "openai", "model": MODELS[i % 12],
                "path": "/v1/chat/completions", "status_code": 200, "success": True, "cached": False, "step": 0,
                "tokens_in": 100, "tokens_out": 50, "cost_usd": Decimal("0.00125"), "custom_cost": False,
                "usage_estimated": False, "billing_mode": "byok", "zdr_applied": False,
                "identity": {"user_id": f"u{i % 50}", "email": None, "groups": ["eng"], "service_token": None},
                "metadata": {"team": "a", "cf.user_id": f"u{i % 50}"}})
    return row


async def writer_cost(db: Database, now: datetime, rows: int = 20_000, rounds: int = 3) -> None:
    """Rows per second through the gateway's log writer (batches of 500, one statement each), with the rollup
    trigger and without it, interleaved in the same run; and the same for the writer's INSERT statement alone
    (the batches' parameters built beforehand: the database's side only)."""
    rates: dict[tuple[str, bool], list[float]] = {}
    offset = 0

    def batches(first: int) -> list[list[list[Any]]]:
        out = []
        for b in range(first, first + rows, 500):
            items = [_row(i, now) for i in range(b, b + 500)]
            out.append([[_json_text(r[c]) for r in items] if c in _JSONB else [r[c] for r in items]
                        for c in COLUMNS])
        return out

    for _ in range(rounds):
        for enabled in (True, False):
            await db.pool.execute(f"ALTER TABLE request_logs {'ENABLE' if enabled else 'DISABLE'} TRIGGER "
                                  "analytics_inserted")
            writer = LogWriter(db)
            for i in range(rows):
                writer.submit(_row(offset + i, now), None)
            offset += rows
            t = time.perf_counter()
            await writer.flush()
            rates.setdefault(("writer", enabled), []).append(rows / (time.perf_counter() - t))
            prepared = batches(offset)
            offset += rows
            async with db.pool.acquire() as conn:
                t = time.perf_counter()
                for params in prepared:
                    async with conn.transaction():
                        await conn.execute(INSERT, *params)
                rates.setdefault(("statement", enabled), []).append(rows / (time.perf_counter() - t))
    await db.pool.execute("ALTER TABLE request_logs ENABLE TRIGGER analytics_inserted")
    print(f"\n| {rounds} interleaved rounds of {rows:,} rows, batches of 500 | rollup trigger | rows/s, median | "
          f"each round |\n|---|---|---|---|")
    for what, label in (("writer", "`LogWriter.flush`"), ("statement", "its INSERT statement alone")):
        for enabled in (True, False):
            got = rates[(what, enabled)]
            print(f"| {label} | {'on' if enabled else 'off'} | {statistics.median(got):,.0f} | "
                  f"{' / '.join(f'{r:,.0f}' for r in got)} |")


def forecast_error(seed: int = 7, trials: int = 200) -> None:
    """Mean absolute percentage error of the next 7 days' spend predicted from 28 days of history, on series with
    a trend (-2 %..+3 % a day), a weekly cycle (weekends at 30-60 %) and noise (sd 15 %); against a flat 7-day
    average, the simplest alternative."""
    rnd = random.Random(seed)
    ours, flat = [], []
    for _ in range(trials):
        growth = rnd.uniform(-0.02, 0.03)
        weekend = rnd.uniform(0.3, 0.6)
        base = rnd.uniform(5, 500) * 1e9
        today = date(2026, 11, 2) + timedelta(days=rnd.randrange(7))

        def spend(d: date, today: date = today, base: float = base, growth: float = growth,
                  weekend: float = weekend) -> float:
            cycle = weekend if d.weekday() >= 5 else 1.0
            return max(0.0, base * (1 + growth) ** (d - today).days * cycle * rnd.gauss(1, 0.15))
        history = {today - timedelta(days=i): int(spend(today - timedelta(days=i))) for i in range(1, 29)}
        future = [(today + timedelta(days=i), spend(today + timedelta(days=i))) for i in range(7)]
        model = fit(history, datetime.combine(today, datetime.min.time(), UTC))
        actual = sum(v for _, v in future)
        ours.append(abs(sum(model.rate(d) for d, _ in future) - actual) / actual)
        average = sum(history[today - timedelta(days=i)] for i in range(1, 8)) / 7
        flat.append(abs(average * 7 - actual) / actual)
    print(f"\nforecast error, next 7 days' spend, {trials} generated series: trend + weekday profile "
          f"{100 * statistics.mean(ours):.1f} % (p90 {100 * sorted(ours)[int(0.9 * trials)]:.1f} %); "
          f"flat 7-day average {100 * statistics.mean(flat):.1f} % (p90 {100 * sorted(flat)[int(0.9 * trials)]:.1f} %)")


async def measure(url: str, rows: int, days: int, users: int, runs: int, keep: bool = False) -> None:
    now = datetime.now(UTC)
    db = await Database.connect(url, min_size=1, max_size=4)
    try:
        print(f"generating {rows:,} log rows over {days} days, {users} users ...", flush=True)
        await generate(db, rows, days, users, now)
        if keep:
            print(f"kept: --database {url} --now {now.isoformat()}", flush=True)
        await storage(db)
        await timings(db, now, runs)
        if not keep:
            await writer_cost(db, now)
    finally:
        await db.close()


async def remeasure(url: str, now: datetime, runs: int) -> None:
    db = await Database.connect(url, min_size=1, max_size=4)
    try:
        await storage(db)
        await timings(db, now, runs)
    finally:
        await db.close()


async def kept_database(url: str) -> str:
    """A new database beside `url`'s, not dropped: its URL."""
    name = f"spendgate_bench_analytics_kept_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def main(rows: int, days: int, users: int, runs: int, keep: bool = False) -> None:
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("set TEST_DATABASE_URL (a Postgres server where a throwaway database may be created)")
    forecast_error()
    if keep:
        bench_url = asyncio.run(kept_database(url))
        migrate(bench_url)
        asyncio.run(measure(bench_url, rows, days, users, runs, keep=True))
        return
    with database_beside(url, "spendgate_bench_analytics") as bench_url:
        migrate(bench_url)
        asyncio.run(measure(bench_url, rows, days, users, runs))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the database (its URL printed)")
    parser.add_argument("--database", help="a database kept by --keep: time the queries on it only")
    parser.add_argument("--now", help="with --database: the `now` --keep printed (ISO 8601)")
    args = parser.parse_args()
    if args.database:
        if not args.now:
            parser.error("--database needs --now")
        asyncio.run(remeasure(args.database, datetime.fromisoformat(args.now), args.runs))
    else:
        main(args.rows, args.days, args.users, args.runs, args.keep)
