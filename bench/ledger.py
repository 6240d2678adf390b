"""Ledger benchmark: one hot tenant, 32 concurrent workers, a hold and a settlement per simulated request.

    .venv/bin/python bench/ledger.py [--seconds 10] [--workers 32]

Prints one JSON line: {"bench":"ledger","requests_per_s":N,"p50_ms":x,"p99_ms":y,"overdrafts":0,"invariants":"ok"}.
Each hold and each settlement is one round trip and commits durably (synchronous_commit stays on).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

from _common import emit, fresh_database, percentile

from gateway.db import Database
from gateway.ledger import Ledger
from gateway.ledger.invariants import check_invariants

USD = 1_000_000_000


async def run(url: str, seconds: float, workers: int) -> dict[str, object]:
    db = await Database.connect(url, min_size=workers, max_size=workers)
    ledger = Ledger(db)
    tenant = "bench-hot"
    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", tenant)
    await ledger.open_tenant(tenant)
    await ledger.top_up(tenant, 10_000_000 * USD, "bench-seed")
    latencies: list[float] = []
    refused = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
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
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - began
    overdrafts = await db.pool.fetchval(
        "SELECT count(*) FROM ledger.accounts WHERE debits_must_not_exceed_credits "
        "AND debits_posted + debits_pending > credits_posted"
    )
    violations = await check_invariants(db)
    await db.close()
    return {
        "bench": "ledger",
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "overdrafts": overdrafts,
        "invariants": "ok" if not violations else violations,
        "refused": refused,
        "workers": workers,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args()
    with fresh_database() as url:
        emit(asyncio.run(run(url, args.seconds, args.workers)))


if __name__ == "__main__":
    main()
