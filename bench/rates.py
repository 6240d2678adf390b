"""Rate-limit benchmark: what 1 and 5 rate limits cost against none, side by side in one run.

    .venv/bin/python bench/rates.py [--duration 8] [--warmup 2] [--concurrency 32] [--repeat 2] [--billing byok,unified]

The stack of bench/limits.py (a fake OpenAI upstream and one `spendgate serve` process on loopback, a fresh
database, the load from this process with aiohttp). One account has three gateways: `r0` without rate limits, `r1`
with one (requests per minute), `r5` with five (requests and tokens, fixed and sliding, unscoped, split per user,
per model, per provider), every limit far above what the run sends, so the timed runs measure the counting and not
refusals. Rounds alternate the gateways (r0, r1, r5, r0, ...) so that they see the same machine. Two billing
modes:

- `byok`: the client's own key and no spend rule: without rate limits nothing is reserved at all, so r1/r5 add
  the whole reserve and settle round trips (batched);
- `unified`: the gateway's key, so every request already holds credit in one reservation: rate limits only add
  lines to it.

Prints one line per (billing, gateway, round) and a summary per billing mode with medians and ratios:

    {"bench":"rates","billing":"byok","rules":1,"gateway_rps":N,"p50_ms":x,"p99_ms":y,"gateway_cpu_ms":c,...}

After the runs it checks that every reservation settled, that each rule counted exactly the requests answered 200
(and the tokens they used), and the limits' and the ledger's invariants; it exits non-zero when one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import uuid
from typing import Any

import asyncpg
from _common import emit, percentile
from limits import Admin, Load, backend_pids, bench_database, cpu_seconds, invariants, stack, wait_settled

MODEL = "gpt-4o-mini"
HUGE = 10**12
RULES: list[dict[str, Any]] = [
    {"name": "rpm", "limit": HUGE, "interval_s": 60},
    {"name": "tokens-per-minute", "limit": HUGE, "interval_s": 60, "technique": "sliding", "unit": "tokens"},
    {"name": "per-user", "limit": HUGE, "interval_s": 3600, "scope": {"metadata.user_id": {"split": True}}},
    {"name": "per-model", "limit": HUGE, "interval_s": 600, "technique": "sliding",
     "scope": {"model": {"equals": f"openai/{MODEL}"}}},
    {"name": "per-provider-tokens", "limit": HUGE, "interval_s": 86400, "unit": "tokens",
     "scope": {"provider": {"split": True}}},
]
COUNTS = (0, 1, 5)


async def setup(admin: Admin, billing: str) -> str:
    account = f"bench-rates-{uuid.uuid4().hex[:8]}"
    await admin.post("/accounts", {"id": account})
    for n in COUNTS:
        await admin.post(f"/accounts/{account}/gateways", {"id": f"r{n}", "rate_limits": RULES[:n]})
    if billing == "unified":
        await admin.post(f"/accounts/{account}/credits/topups", {"amount_usd": "1000000", "idempotency_key": "seed"})
    return account


async def measure(base: str, account: str, n: int, billing: str, pid: int, conn: asyncpg.Connection,
                  args: argparse.Namespace) -> dict[str, Any]:
    headers = {"content-type": "application/json", "cf-aig-metadata": json.dumps({"user_id": "hot"})}
    if billing == "byok":
        headers["Authorization"] = "Bearer sk-bench"
    body = json.dumps({"model": MODEL, "max_tokens": 64,
                       "messages": [{"role": "user", "content": "benchmark the rate limits"}]}).encode()
    load = Load(f"{base}/v1/{account}/r{n}/openai/chat/completions", headers, body, args.concurrency)
    warm = await load.run(args.warmup)
    await wait_settled(conn)
    backends = await backend_pids(conn)
    before = cpu_seconds([pid]), cpu_seconds(backends)
    result = await load.run(args.duration)
    cpu_gateway, cpu_db = cpu_seconds([pid]) - before[0], cpu_seconds(backends) - before[1]
    lat = result["latencies"]
    answered = max(len(lat), 1)
    return {"bench": "rates", "billing": billing, "rules": n, "gateway_rps": round(result["rps"], 1),
            "p50_ms": round(percentile(lat, 0.5), 2), "p99_ms": round(percentile(lat, 0.99), 2),
            "gateway_cpu_ms": round(cpu_gateway * 1000 / answered, 3),
            "db_cpu_ms": round(cpu_db * 1000 / answered, 3),
            "requests": len(lat), "answered": len(lat) + len(warm["latencies"]),
            "errors": sum(c for s, c in {**warm["statuses"], 200: 0}.items() if s != 200)
            + sum(c for s, c in result["statuses"].items() if s != 200),
            "concurrency": args.concurrency}


async def counted_right(conn: asyncpg.Connection, account: str, answered: dict[int, int]) -> list[str]:
    """Each rule of r1 and r5 counting requests counted exactly the requests answered 200 (warm-ups included)."""
    from gateway.limits.rate_rules import rate_rules, validate

    problems = []
    for n in (1, 5):
        for rule in rate_rules(account, f"r{n}", validate(RULES[:n])):
            if rule.unit != "requests":
                continue
            spent = await conn.fetchval("SELECT coalesce(sum(spent), 0) FROM limits.buckets WHERE rule_id = $1",
                                        uuid.UUID(rule.id))
            if spent != answered[n]:
                problems.append(f"r{n} {rule.name}: counted {spent}, answered {answered[n]}")
    return problems


async def run(database_url: str, args: argparse.Namespace) -> int:
    failures: list[str] = []
    async with stack(database_url, args.pool_max) as (base, pid):
        admin = Admin(base)
        conn = await asyncpg.connect(database_url)
        try:
            for billing in args.billing.split(","):
                account = await setup(admin, billing)
                records: dict[int, list[dict[str, Any]]] = {n: [] for n in COUNTS}
                for _ in range(args.repeat):
                    for n in COUNTS:
                        record = await measure(base, account, n, billing, pid, conn, args)
                        records[n].append(record)
                        emit(record)
                        if record["errors"]:
                            failures.append(f"{billing} r{n}: {record['errors']} non-200 answers")
                open_, pending = await wait_settled(conn)
                if open_ or pending:
                    failures.append(f"{open_} reservations open, {pending} pending")
                answered = {n: sum(r["answered"] for r in records[n]) for n in COUNTS}
                failures += await counted_right(conn, account, answered)
                rps = {n: statistics.median(r["gateway_rps"] for r in records[n]) for n in COUNTS}
                summary = {"bench": "rates", "summary": True, "billing": billing,
                           "rps": {str(n): rps[n] for n in COUNTS},
                           "p50_ms": {str(n): statistics.median(r["p50_ms"] for r in records[n]) for n in COUNTS},
                           "gateway_cpu_ms": {str(n): statistics.median(r["gateway_cpu_ms"] for r in records[n])
                                              for n in COUNTS},
                           "db_cpu_ms": {str(n): statistics.median(r["db_cpu_ms"] for r in records[n])
                                         for n in COUNTS},
                           "ratio_1_0": round(rps[1] / rps[0], 3), "ratio_5_0": round(rps[5] / rps[0], 3),
                           "repeat": args.repeat}
                emit(summary)
            failures += await invariants(database_url)
        finally:
            await conn.close()
            await admin.close()
    if failures:
        emit({"bench": "rates", "failures": failures})
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8, help="seconds of each timed run")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of r0, r1, r5")
    parser.add_argument("--billing", default="byok,unified")
    parser.add_argument("--pool-max", type=int, default=10)
    args = parser.parse_args()
    with bench_database() as url:
        raise SystemExit(asyncio.run(run(url, args)))


if __name__ == "__main__":
    main()
