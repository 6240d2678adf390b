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

`--batch-sizes 1,4,8,16,32` instead measures what one request costs Postgres against the size of its batch: for
each size, rounds of one `limits.reserve` call carrying that many unified-billing requests (5 spend rules matching
each, as bench/peers.py's unified setup, and a credit hold) and one `limits.settle` call settling them, one after
the other on one connection; the CPU time of that connection's backend (/proc/<pid>/stat; the server must be on
this machine) and of this process, per request:

    {"bench":"ledger_batch_cost","batch":8,"postgres_reserve_ms":x,"postgres_settle_ms":y,"client_ms":z,...}
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
from gateway.limits.reservations import (
    RESERVE,
    SETTLE,
    HoldRequest,
    Limits,
    _reserve_item,
    _settle_item,
    bucket_lines,
    reservation_args,
    settlement_args,
)
from gateway.limits.rules import parse_rule

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


async def batch_cost(url: str, sizes: list[int], rounds: int) -> list[dict[str, object]]:
    """Postgres CPU per request against batch size: the fixed cost of a call (its statements' start-up, the
    commit) shared by the requests of the batch."""
    db = await Database.connect(url, min_size=1, max_size=1)
    tenant = "bench-batch-cost"
    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", tenant)
    await Ledger(db).open_tenant(tenant)
    await Ledger(db).top_up(tenant, 10_000_000 * USD, "bench-batch-cost-seed")
    rules = [parse_rule(str(uuid.uuid4()), {"name": f"r{i}", "budget_usd": "1000000", "window": window,
                                             "window_type": kind, **({"scope": scope} if scope else {})})
             for i, (window, kind, scope) in enumerate([
                 ("daily", "fixed", None), ("daily", "rolling", None),
                 ("daily", "fixed", {"metadata.user": {"split": True}}),
                 ("monthly", "fixed", {"model": {"equals": "openai/gpt-4o-mini"}}), ("weekly", "fixed", None)])]
    records: list[dict[str, object]] = []
    try:
        async with db.pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            for size in sizes:
                totals = [0.0, 0.0, 0.0]  # reserve, settle (backend), client
                for n in range(rounds + 10):  # the first 10 rounds warm up
                    now = datetime.now(UTC)
                    lines = bucket_lines(rules, {"metadata.user": "hot", "model": "openai/gpt-4o-mini"}, now)
                    items = [_reserve_item(uuid.uuid4(), lines, 50_000_000, now, now + timedelta(minutes=5),
                                           HoldRequest(tenant, 50_000_000, "bench")) for _ in range(size)]
                    c0, b0 = time.process_time(), _cpu_s(backend)
                    granted = await conn.fetch(RESERVE, *reservation_args(items))
                    b1 = _cpu_s(backend)
                    settlements = [_settle_item(item.id, random.randint(1, 50_000_000), "settled", now)
                                   for item in items]
                    await conn.fetch(SETTLE, *settlement_args(settlements))
                    c1, b2 = time.process_time(), _cpu_s(backend)
                    if not all(row["ok"] for row in granted):
                        raise SystemExit("a reservation was refused: the bench's budgets are too small")
                    if n >= 10:
                        totals[0] += b1 - b0
                        totals[1] += b2 - b1
                        totals[2] += c1 - c0
                requests = rounds * size
                records.append({"bench": "ledger_batch_cost", "batch": size, "rounds": rounds,
                                "postgres_reserve_ms": round(1000 * totals[0] / requests, 3),
                                "postgres_settle_ms": round(1000 * totals[1] / requests, 3),
                                "postgres_ms": round(1000 * (totals[0] + totals[1]) / requests, 3),
                                "client_ms": round(1000 * totals[2] / requests, 3), "rules": len(rules)})
        violations = await check_invariants(db)
        if violations:
            raise SystemExit(f"ledger invariants violated: {violations}")
    finally:
        await db.close()
    return records


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a local process (a Postgres backend)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    parser.add_argument("--batch-sizes", type=lambda text: [int(x) for x in text.split(",") if x.strip()],
                        help="instead: Postgres CPU per request against batch size (e.g. 1,4,8,16,32)")
    parser.add_argument("--rounds", type=int, default=200, help="--batch-sizes: rounds per size")
    args = parser.parse_args()
    modes = ["batched", "single"] if args.mode == "both" else [args.mode]
    if args.batch_sizes:
        with fresh_database() as url:
            for record in asyncio.run(batch_cost(url, args.batch_sizes, args.rounds)):
                emit(record)
        return
    with fresh_database() as url:
        records = [asyncio.run(run(url, args.seconds, args.workers, mode, args.max_inflight, args.stall_after))
                   for mode in modes]
        for record in records:
            emit(record)
        emit(asyncio.run(commit_rate(url, args.seconds, args.workers, float(str(records[0]["requests_per_s"])))))


if __name__ == "__main__":
    main()
