"""Ledger benchmark: one hot tenant, 32 concurrent workers, a hold and a settlement per simulated request.

    .venv/bin/python bench/ledger.py [--seconds 10] [--workers 32] [--mode batched|single|both]

Prints one JSON line per mode: {"bench":"ledger","mode":…,"requests_per_s":N,"p50_ms":x,"p99_ms":y,
"overdrafts":0,"invariants":"ok"}. Every commit is durable (synchronous_commit stays on).

- `batched` (the gateway's path): each worker reserves through `Limits.reserve` with a credit hold and settles
  through `Limits.settle`, as a unified-billing request with no spend rule does; concurrent calls share one
  transaction (one WAL flush) per batch.
- `single`: each hold and each settlement is its own `ledger.hold` / `ledger.settle_hold` call and transaction.

Then, in the same database for the same duration, the same number of connections each run
`UPDATE bench_commit_rate SET n = n + 1 WHERE id = 1` on one row of a separate table, each statement its own
transaction with synchronous_commit on: the most durable commits per second this server gives one hot row (each
holds the row's lock until its commit is flushed). A second line says it and how close the ledger comes:

    {"bench":"ledger_commit_rate","commits_per_s":N,"ledger_commits_per_s":M,"ratio":M/N,...}

where ledger_commits_per_s is the ledger's holds + settlements per second (2 x requests_per_s) of the first mode
run (batched, by default).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
from _common import emit, fresh_database, percentile

from gateway.db import Database
from gateway.ledger import Ledger
from gateway.ledger.invariants import check_invariants
from gateway.limits.reservations import HoldRequest, Limits

USD = 1_000_000_000


async def run(url: str, seconds: float, workers: int, mode: str, max_inflight: int = Limits.MAX_INFLIGHT,
              stall_after: float = Limits.STALL_AFTER) -> dict[str, object]:
    db = await Database.connect(url, min_size=workers, max_size=workers)
    ledger = Ledger(db)
    tenant = f"bench-hot-{mode}"
    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", tenant)
    await ledger.open_tenant(tenant)
    await ledger.top_up(tenant, 10_000_000 * USD, f"bench-seed-{mode}")
    limits = Limits(db, max_inflight=max_inflight, stall_after=stall_after)
    latencies: list[float] = []
    refused = 0
    deadline = time.perf_counter() + seconds

    async def batched() -> None:
        nonlocal refused
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            outcome = await limits.reserve([], 50_000_000, hold=HoldRequest(tenant, 50_000_000, "bench"),
                                           ttl=timedelta(minutes=5))
            if not outcome.ok:
                refused += 1
                continue
            await limits.settle(outcome.reservation_id, random.randint(1, 50_000_000))
            latencies.append((time.perf_counter() - start) * 1000)

    async def single() -> None:
        nonlocal refused
        async with db.pool.acquire() as conn:
            hold = await conn.prepare("SELECT ledger.hold($1, $2, $3, $4, $5, $6)")
            settle = await conn.prepare("SELECT ledger.settle_hold($1, $2, $3, $4)")
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                hid = uuid.uuid4()
                now = datetime.now(UTC)
                held = await hold.fetchval(hid, tenant, 50_000_000, now + timedelta(minutes=5), "bench", now)
                if not held["ok"]:
                    refused += 1
                    continue
                await settle.fetchval(hid, random.randint(1, 50_000_000), "post", now)
                latencies.append((time.perf_counter() - start) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*((batched if mode == "batched" else single)() for _ in range(workers)))
    elapsed = time.perf_counter() - began
    overdrafts = await db.pool.fetchval(
        "SELECT count(*) FROM ledger.accounts WHERE debits_must_not_exceed_credits "
        "AND debits_posted + debits_pending > credits_posted"
    )
    violations = await check_invariants(db)
    await db.close()
    return {
        "bench": "ledger",
        "mode": mode,
        "transactions_per_request": round((limits._reserves.calls + limits._settles.calls) / len(latencies), 3)
        if mode == "batched" and latencies else 2,
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "overdrafts": overdrafts,
        "invariants": "ok" if not violations else violations,
        "refused": refused,
        "workers": workers,
        **({"max_inflight": max_inflight, "stall_after": stall_after} if mode == "batched" else {}),
        "seconds": seconds,
    }


async def commit_rate(url: str, seconds: float, workers: int, ledger_rps: float) -> dict[str, object]:
    """Single-row durable commits per second on this server, and the ledger's holds + settlements against it."""
    pool = await asyncpg.create_pool(url, min_size=workers, max_size=workers,
                                     server_settings={"synchronous_commit": "on"})
    try:
        await pool.execute("CREATE TABLE bench_commit_rate (id int PRIMARY KEY, n bigint NOT NULL)")
        await pool.execute("INSERT INTO bench_commit_rate VALUES (1, 0)")
        settings = {name: await pool.fetchval(f"SHOW {name}") for name in ("synchronous_commit", "fsync")}
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            async with pool.acquire() as conn:
                update = await conn.prepare("UPDATE bench_commit_rate SET n = n + 1 WHERE id = 1")
                while time.perf_counter() < deadline:
                    start = time.perf_counter()
                    await update.fetch()  # no transaction block: the statement commits on its own
                    latencies.append((time.perf_counter() - start) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        elapsed = time.perf_counter() - began
        counted = await pool.fetchval("SELECT n FROM bench_commit_rate WHERE id = 1")
        await pool.execute("DROP TABLE bench_commit_rate")
    finally:
        await pool.close()
    commits = len(latencies) / elapsed
    ledger_commits = 2 * ledger_rps  # a hold and a settlement per request
    return {
        "bench": "ledger_commit_rate",
        "commits_per_s": round(commits, 1),
        "ledger_commits_per_s": round(ledger_commits, 1),
        "ratio": round(ledger_commits / commits, 3) if commits else None,
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "committed": counted,
        **settings,
        "server": os.environ.get("SPENDGATE_TEST_DB_SOURCE", "?"),  # where fresh_database() found it
        "workers": workers,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--mode", choices=["batched", "single", "both"], default="batched")
    parser.add_argument("--max-inflight", type=int, default=Limits.MAX_INFLIGHT,
                        help="at most this many batches in flight per direction (the gateway's default: %(default)s)")
    parser.add_argument("--stall-after", type=float, default=Limits.STALL_AFTER,
                        help="seconds a batch runs before the next may go beside it (0: at once; the gateway's "
                             "default: %(default)s)")
    args = parser.parse_args()
    modes = ["batched", "single"] if args.mode == "both" else [args.mode]
    with fresh_database() as url:
        records = [asyncio.run(run(url, args.seconds, args.workers, mode, args.max_inflight, args.stall_after))
                   for mode in modes]
        for record in records:
            emit(record)
        emit(asyncio.run(commit_rate(url, args.seconds, args.workers, float(str(records[0]["requests_per_s"])))))


if __name__ == "__main__":
    main()
