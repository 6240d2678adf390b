"""Spend-limits benchmark: the reservation path under load, with 0, 5 and 20 matching rules.

    .venv/bin/python bench/limits.py [--duration 10] [--warmup 2] [--concurrency 64] [--rules 0,5,20] [--repeat 1]
                                     [--unified]

A fake OpenAI upstream (uvicorn) and one gateway (`python -m gateway.cli serve`, i.e. `spendgate serve`: the
whole chain, RequestLog on) each run in their own process on loopback; the load comes from this process
(aiohttp, 64 concurrent clients). Every request is from one hot user (`cf-aig-metadata: {"user_id": "hot"}`,
one account, so also one tenant with `--unified`). For each N, a fresh gateway gets N rules through the admin
API, all matching every request (unscoped, `metadata.user_id` split, `model` equals, `provider` split, both
combined; fixed and rolling daily/weekly/monthly windows; some with alerts; one `monitor` past 10), with budgets
that never block, so the timed run measures the reservation path, not refusals. Then, on a second gateway of
the same account, a burst with the same N rules and small budgets (a few dozen requests' worth) must hit 429s
and never overspend. Prints per N:

    {"bench":"limits","rules":N,"gateway_rps":N,"p50_ms":x,"p99_ms":y,"overspend_usd":"0",...}

and a final line with rps(5)/rps(0) and rps(20)/rps(0). `overspend_usd` is computed from the database after
both phases: for every (rule, bucket key), max(0, spent - budget) summed (spend of all slices of a bucket, so a
rolling window is never under-counted). The run also checks, and reports, that no reservation or bucket
pending is left open, that every bucket's spent equals the actual costs of the settled reservations in it,
that the burst granted exactly as many reservations as it got 200s, and the limits/ledger invariants. It exits
non-zero when any check fails.

The server: BENCH_DATABASE_URL, else TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432 when it answers,
else what the tests use (Testcontainers, the embedded Postgres); a fresh `bench_limits_<random>` database is
created there, migrated, and dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from _common import emit, percentile

from gateway.db import migrate
from gateway.money import from_nano, usd_str

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ADMIN = "bench-admin"
MODEL = "gpt-4o-mini"
HOT_USER = "hot"
NEVER_BLOCKS_USD = "1000000"

UPSTREAM = """
import uvicorn
from harness.fakes import openai_app
uvicorn.run(openai_app("/v1"), host="127.0.0.1", port={port}, log_level="error", access_log=False)
"""

SCOPES: list[dict[str, Any]] = [  # every one matches every request of the bench
    {},
    {"metadata.user_id": {"split": True}},
    {"model": {"equals": f"openai/{MODEL}"}},
    {"provider": {"split": True}},
    {"metadata.user_id": {"split": True}, "model": {"equals": f"openai/{MODEL}"}},
]
WINDOWS = ("daily", "weekly", "monthly")


def rule_specs(n: int, budgets_usd: list[str]) -> list[dict[str, Any]]:
    specs = []
    for i in range(n):
        spec: dict[str, Any] = {
            "name": f"bench-{i}", "budget_usd": budgets_usd[i], "scope": SCOPES[i % len(SCOPES)],
            "window": WINDOWS[(i + i // len(SCOPES)) % len(WINDOWS)],
            "window_type": "rolling" if i % 2 else "fixed",
        }
        if i % 3 == 2:
            spec["alert_at"] = [0.5, 0.9]
        if i == 10:
            spec["action"] = "monitor"
        specs.append(spec)
    return specs


# -- processes -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def _admin_sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _answers(url: str) -> bool:
    try:
        asyncio.run(_admin_sql(url, "SELECT 1"))
        return True
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False


@contextlib.contextmanager
def server() -> Iterator[str]:
    """BENCH_DATABASE_URL or TEST_DATABASE_URL; else a local server on 127.0.0.1:5432 if one answers; else
    what the tests would use (a Testcontainers Postgres, the embedded one)."""
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL")
    if url or _answers(LOCAL_SERVER):
        yield url or LOCAL_SERVER
        return
    from harness.pg import server_url

    with server_url() as (found, _source):
        yield found


@contextlib.contextmanager
def bench_database() -> Iterator[str]:
    """A fresh `bench_limits_<random>` database, migrated; dropped at the end."""
    with server() as url:
        name = f"bench_limits_{uuid.uuid4().hex[:10]}"
        asyncio.run(_admin_sql(url, f'CREATE DATABASE "{name}"'))
        try:
            db_url = _with_database(url, name)
            migrate(db_url)
            yield db_url
        finally:
            asyncio.run(_admin_sql(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class Process:
    """A child process on loopback with its output in a temporary log file; always stopped."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-limits-"))
        self.log_path = self.workdir / "out.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         env={**env, "PYTHONPATH": str(ROOT), "SPENDGATE_DATA_DIR":
                                              str(self.workdir / "data")})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def logged(self, *levels: str) -> list[str]:
        """The process's JSON log lines at these levels (gateway/context.py's format)."""
        marks = tuple(f'"level": "{level}"' for level in levels)
        return [line for line in self.log_path.read_text(errors="replace").splitlines()
                if any(mark in line for mark in marks)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def remove(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


async def wait_up(url: str, proc: Process, within: float = 90, ok: int = 200) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.proc.poll() is not None:
                raise RuntimeError(f"{url}: process exited\n{proc.log()}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status <= ok:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not come up\n{proc.log()}")


@contextlib.asynccontextmanager
async def stack(database_url: str, pool_max: int) -> AsyncIterator[tuple[str, int]]:
    """The fake upstream and one gateway process; yields the gateway's base URL and pid."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SPENDGATE_")}
    up_port, gw_port = free_port(), free_port()
    upstream = Process([PY, "-c", UPSTREAM.format(port=up_port)], base)
    gateway = Process(
        [PY, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(gw_port)],
        {**base, "DATABASE_URL": database_url, "SPENDGATE_ADMIN_TOKEN": ADMIN,
         "SPENDGATE_UPSTREAM_OPENAI": f"http://127.0.0.1:{up_port}/v1", "SPENDGATE_KEY_OPENAI": "gw-key-openai",
         "SPENDGATE_DB_POOL_MAX": str(pool_max)},
    )
    try:
        await wait_up(f"http://127.0.0.1:{up_port}/", upstream, ok=499)
        await wait_up(f"http://127.0.0.1:{gw_port}/readyz", gateway)
        yield f"http://127.0.0.1:{gw_port}", gateway.proc.pid
    finally:
        gateway.stop()
        upstream.stop()
        problems = gateway.logged("error", "critical", "warning")
        if problems:
            print(f"the gateway logged {len(problems)} warning/error line(s), last: {problems[-1][:500]}",
                  file=sys.stderr)
        gateway.remove()
        upstream.remove()


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (Linux /proc; 0 where unreadable)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def backend_pids(conn: asyncpg.Connection) -> list[int]:
    """The Postgres backends serving the bench database (the gateway's pool), for their CPU time."""
    rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                            "AND pid <> pg_backend_pid()")
    return [int(r["pid"]) for r in rows]


# -- load ------------------------------------------------------------------------------------------------------


class Load:
    def __init__(self, url: str, headers: dict[str, str], body: bytes, concurrency: int) -> None:
        self.url, self.headers, self.body, self.concurrency = url, headers, body, concurrency

    async def run(self, seconds: float, max_requests: int | None = None) -> dict[str, Any]:
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        sent = 0
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal sent
                while time.perf_counter() < deadline and (max_requests is None or sent < max_requests):
                    sent += 1
                    start = time.perf_counter()
                    try:
                        async with session.post(self.url, data=self.body, headers=self.headers) as r:
                            await r.read()
                            status = r.status
                    except (aiohttp.ClientError, TimeoutError):
                        status = -1  # no answer: counted as an error
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200:
                        latencies.append((time.perf_counter() - start) * 1000)

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
            elapsed = time.perf_counter() - began
        return {"rps": len(latencies) / elapsed, "latencies": latencies, "statuses": statuses, "elapsed": elapsed}


class Admin:
    def __init__(self, base: str) -> None:
        self.base = base + "/admin"
        self.session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"})

    async def post(self, path: str, body: dict[str, Any], expect: int = 201) -> Any:
        async with self.session.post(self.base + path, json=body) as r:
            text = await r.text()
            if r.status != expect:
                raise RuntimeError(f"POST {path}: {r.status} {text}")
            return json.loads(text).get("result")

    async def close(self) -> None:
        await self.session.close()


# -- checks ----------------------------------------------------------------------------------------------------


async def wait_settled(conn: asyncpg.Connection, within: float = 15) -> tuple[int, int]:
    """Wait until every reservation is settled (the gateway settles after the body went out); (open, pending)."""
    deadline = time.monotonic() + within
    while True:
        open_ = await conn.fetchval("SELECT count(*) FROM limits.reservations WHERE settled_at IS NULL")
        pending = await conn.fetchval("SELECT coalesce(sum(pending), 0)::bigint FROM limits.buckets")
        if (open_ == 0 and pending == 0) or time.monotonic() > deadline:
            return int(open_), int(pending)
        await asyncio.sleep(0.1)


async def money_checks(conn: asyncpg.Connection, account: str, gateway: str) -> dict[str, Any]:
    """For the rules of one gateway: overspend (spent over budget; `monitor` rules do not enforce theirs, so they
    are not counted), and every bucket's spent == the actual costs of the reservations settled in it."""
    rules = await conn.fetch("SELECT id, spec FROM limits.rules WHERE account_id = $1 AND gateway_id = $2",
                             account, gateway)
    overspend = 0
    mismatched = []
    for rule in rules:
        spec = rule["spec"] if isinstance(rule["spec"], dict) else json.loads(rule["spec"])
        budget = int(Decimal(spec["budget_usd"]) * 10**9)
        buckets = await conn.fetch(
            "SELECT key, sum(spent)::bigint AS spent FROM limits.buckets WHERE rule_id = $1 GROUP BY key",
            rule["id"])
        settled = {r["key"]: int(r["actual"]) for r in await conn.fetch(
            """SELECT l->>'key' AS key, coalesce(sum(r.actual), 0)::bigint AS actual
                 FROM limits.reservations r, jsonb_array_elements(r.lines) l
                WHERE (l->>'rule_id')::uuid = $1 AND r.settled_at IS NOT NULL GROUP BY 1""", rule["id"])}
        for b in buckets:
            if spec.get("action", "block") != "monitor":
                overspend += max(0, int(b["spent"]) - budget)
            if settled.get(b["key"], 0) != int(b["spent"]):
                mismatched.append((spec["name"], b["key"], int(b["spent"]), settled.get(b["key"], 0)))
    return {"overspend_nano": overspend, "mismatched": mismatched, "rules": len(rules)}


async def invariants(database_url: str) -> list[str]:
    from gateway.db import Database
    from gateway.ledger.invariants import check_invariants
    from gateway.limits.invariants import check_limit_invariants

    db = await Database.connect(database_url, min_size=1, max_size=1)
    try:
        return await check_invariants(db) + await check_limit_invariants(db)
    finally:
        await db.close()


# -- one N -----------------------------------------------------------------------------------------------------


async def measure(base: str, gateway_pid: int, admin: Admin, conn: asyncpg.Connection, database_url: str, n: int,
                  args: argparse.Namespace) -> dict[str, Any]:
    account = f"bench-{uuid.uuid4().hex[:8]}-r{n}"
    await admin.post("/accounts", {"id": account})
    for g in ("timed", "burst"):
        await admin.post(f"/accounts/{account}/gateways", {"id": g})
    if args.unified:
        await admin.post(f"/accounts/{account}/credits/topups",
                         {"amount_usd": "1000000", "idempotency_key": "bench-seed"})
    for spec in rule_specs(n, [NEVER_BLOCKS_USD] * n):
        await admin.post(f"/accounts/{account}/gateways/timed/spend-limits", spec)

    headers = {"content-type": "application/json", "cf-aig-metadata": json.dumps({"user_id": HOT_USER})}
    if not args.unified:
        headers["Authorization"] = "Bearer sk-bench"  # the client's own key: BYOK, no credit hold
    body = json.dumps({"model": MODEL, "max_tokens": 64,
                       "messages": [{"role": "user", "content": "benchmark the reservation path"}]}).encode()
    timed = Load(f"{base}/v1/{account}/timed/openai/chat/completions", headers, body, args.concurrency)
    await timed.run(args.warmup)  # connections, caches, bucket rows
    backends = await backend_pids(conn)
    cpu_before = cpu_seconds([gateway_pid]), cpu_seconds(backends)
    result = await timed.run(args.duration)
    cpu_gateway, cpu_db = (cpu_seconds([gateway_pid]) - cpu_before[0], cpu_seconds(backends) - cpu_before[1])
    lat = result["latencies"]
    open_, pending = await wait_settled(conn)
    checks = await money_checks(conn, account, "timed")
    record: dict[str, Any] = {
        "bench": "limits", "rules": n, "gateway_rps": round(result["rps"], 1),
        "p50_ms": round(percentile(lat, 0.5), 2), "p99_ms": round(percentile(lat, 0.99), 2),
    }
    errors = sum(c for s, c in result["statuses"].items() if s != 200)
    burst: dict[str, Any] = {}
    if n > 0:
        burst = await run_burst(base, admin, conn, account, n, headers, body, args)
    overspend = checks["overspend_nano"] + burst.get("overspend_nano", 0)
    mismatched = checks["mismatched"] + burst.get("mismatched", [])
    violations = await invariants(database_url)
    open_b, pending_b = await wait_settled(conn, 1)
    record.update({
        "overspend_usd": usd_str(overspend) if overspend else "0",
        "open_reservations": max(open_, open_b), "pending_usd": str(from_nano(max(pending, pending_b))),
        "errors": errors, "requests": len(lat), "seconds": round(result["elapsed"], 2),
        "billing": "unified" if args.unified else "byok", "concurrency": args.concurrency,
        # CPU per answered request: the gateway process, and the Postgres backends of its pool
        "gateway_cpu_ms": round(cpu_gateway * 1000 / max(len(lat), 1), 3),
        "db_cpu_ms": round(cpu_db * 1000 / max(len(lat), 1), 3),
    })
    if burst:
        record["burst"] = {k: v for k, v in burst.items() if k not in ("overspend_nano", "mismatched")}
    failures = []
    if overspend:
        failures.append(f"overspend {usd_str(overspend)} USD")
    if max(open_, open_b) or max(pending, pending_b):
        failures.append(f"{max(open_, open_b)} reservation(s) still open, pending {max(pending, pending_b)} nano")
    if mismatched:
        failures.append(f"spent != settled actual cost in {mismatched[:3]}")
    if violations:
        failures.append("invariants: " + "; ".join(violations))
    if errors:
        failures.append(f"non-200 answers in the timed run: {result['statuses']}")
    if burst and not burst["refused"]:
        failures.append("the burst was never refused: its budgets did not bind")
    if burst and burst["granted"] != burst["ok"]:
        failures.append(f"burst: {burst['ok']} 200s but {burst['granted']} settled reservations")
    if failures:
        record["failures"] = failures
    return record


async def run_burst(base: str, admin: Admin, conn: asyncpg.Connection, account: str, n: int,
                    headers: dict[str, str], body: bytes, args: argparse.Namespace) -> dict[str, Any]:
    """The same rules with budgets of a few dozen requests' worst case: 429s must come, overspend never."""
    estimate = int(await conn.fetchval("SELECT max(estimate) FROM limits.reservations"))
    budgets = [usd_str(estimate * (20 + 7 * (i % 5)) + estimate // 3) for i in range(n)]
    for spec in rule_specs(n, budgets):
        await admin.post(f"/accounts/{account}/gateways/burst/spend-limits", spec)
    before = int(await conn.fetchval("SELECT count(*) FROM limits.reservations WHERE settled_at IS NOT NULL "
                                     "AND actual > 0"))
    load = Load(f"{base}/v1/{account}/burst/openai/chat/completions", headers, body, args.concurrency)
    result = await load.run(min(args.duration, 5.0), max_requests=args.concurrency * 8)
    await wait_settled(conn)
    after = int(await conn.fetchval("SELECT count(*) FROM limits.reservations WHERE settled_at IS NOT NULL "
                                    "AND actual > 0"))
    checks = await money_checks(conn, account, "burst")
    statuses = result["statuses"]
    return {"ok": statuses.get(200, 0), "refused": statuses.get(429, 0),
            "other": {s: c for s, c in statuses.items() if s not in (200, 429)},
            "granted": after - before, "tightest_budget_usd": min(budgets, key=Decimal),
            "estimate_usd": usd_str(estimate), "overspend_nano": checks["overspend_nano"],
            "mismatched": checks["mismatched"]}


async def run(database_url: str, args: argparse.Namespace) -> int:
    counts = [int(x) for x in args.rules.split(",")]
    rps: dict[int, list[float]] = {n: [] for n in counts}
    p50: dict[int, list[float]] = {n: [] for n in counts}
    p99: dict[int, list[float]] = {n: [] for n in counts}
    failed = False
    async with stack(database_url, args.pool_max) as (base, gateway_pid):
        admin = Admin(base)
        conn = await asyncpg.connect(database_url)
        try:
            for _round in range(args.repeat):
                for n in counts:
                    record = await measure(base, gateway_pid, admin, conn, database_url, n, args)
                    rps[n].append(record["gateway_rps"])
                    p50[n].append(record["p50_ms"])
                    p99[n].append(record["p99_ms"])
                    failed = failed or "failures" in record
                    emit(record)
        finally:
            await conn.close()
            await admin.close()
    medians = {n: statistics.median(v) for n, v in rps.items()}
    summary: dict[str, Any] = {
        "bench": "limits", "summary": True, "rps": {str(n): medians[n] for n in counts},
        "p50_ms": {str(n): statistics.median(p50[n]) for n in counts},
        "p99_ms": {str(n): statistics.median(p99[n]) for n in counts},
    }
    if medians.get(0):
        for n in counts:
            if n:
                summary[f"ratio_{n}_0"] = round(medians[n] / medians[0], 3)
        if 5 in medians:
            summary["target_ratio_5_0"] = 0.7
            summary["meets_target"] = medians[5] / medians[0] >= 0.7
    if args.repeat > 1:
        summary["repeat"] = args.repeat
    emit(summary)
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10, help="seconds of the timed run per N")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of warm-up per N")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rules", default="0,5,20", help="comma-separated rule counts (at most 20)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds over the rule counts (interleaved); the summary has the medians")
    parser.add_argument("--pool-max", type=int, default=20, help="the gateway's SPENDGATE_DB_POOL_MAX")
    parser.add_argument("--unified", action="store_true", help="unified billing: a credit hold per request too")
    args = parser.parse_args()
    with bench_database() as url:
        code = asyncio.run(run(url, args))
    sys.exit(code)


if __name__ == "__main__":
    main()
