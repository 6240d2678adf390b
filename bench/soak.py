"""Soak: three `spendgate serve` instances behind nginx (deploy/nginx.conf), mixed traffic for ten minutes, memory
sampled per instance, money checked at the end.

    .venv/bin/python bench/soak.py [--duration 600] [--concurrency 32] [--rate 250] [--warmup 30]
                                   [--server postgresql://postgres@127.0.0.1:5432/postgres] [--heap] [--tracemalloc N]

Everything is on loopback and stops by itself (also on Ctrl-C, SIGTERM or an error: nginx, the gateways and the
fakes are stopped, the database dropped). Setup: a fresh database `soak_<random>` on --server, migrated; a fake
OpenAI and a fake Anthropic upstream, each its own uvicorn process; three gateways (`spendgate serve`,
SPENDGATE_DB_POOL_MAX=10 each) and nginx in front, as tests/ops/test_nginx_cluster.py runs them. The load comes
from this process (asyncio + aiohttp, --concurrency workers, paced to at most --rate requests/s in total) through
nginx only. Tenants:

- `unified`: unified billing (credits), a per-user budget rule; JSON calls, short SSE streams, long SSE streams
  (~3 s), and streams the client drops after the first event;
- `byok`: the client's own key, payload logging off, a per-user budget rule and a monitor rule; JSON and SSE
  (without stream_options: the gateway adds include_usage upstream and hides the extra chunk);
- `blocked`: BYOK, a $0.20 daily budget that four $0.05 calls exhaust: every later call is a 429;
- `fallback`: unified, the compat route, a $0.50 budget on openai/gpt-4o-mini whose action is
  {"fallback_model": "anthropic/claude-haiku-4-5"}: ten calls on OpenAI, every later one served by the fake
  Anthropic through the translation (JSON and SSE), and a monitor rule over all its spend.

JSON lines on stdout: `setup`; `sample` after --warmup seconds (phase "start"), every --sample-every seconds
(phase "minute") and once the traffic has stopped and drained (phase "end") with each instance's VmRSS, RssAnon,
open file descriptors, CPU seconds and its /metrics gauges (spendgate_holds_open, spendgate_log_queue_depth,
pool connections in use); `traffic` (requests by kind and status, errors by cause with samples, latency
percentiles, nginx's upstream share); `checks` (both invariant functions, no reservation pending, no hold open,
no bucket or ledger account with a pending amount, exactly 4 served on `blocked` and 10 on the fallback's first
model, credits debited = bucket spend, every request logged); then the summary line
{"bench":"soak","duration_s":..,"requests":..,"errors":..,"rss_mb":{"start":[..],"end":[..]},"invariants":"ok"}.
Exit status 0 only when there were no errors and every check passed.

Expected statuses are 200 everywhere and 429 on `blocked`; anything else (another status, a timeout, a refused
connection, a body that is not the fake's answer, a leaked usage chunk) counts as an error, by cause.

Investigating memory: --heap starts each gateway through a small bootstrap that, on SIGUSR1, writes the counts of
live objects by type (gc.get_objects) and, with --tracemalloc N (frames), a tracemalloc snapshot into the
instance's directory; the soak takes one at the "start" sample (the load paused meanwhile: a dump freezes the
gateway's event loop for seconds) and one at the "end", and prints what grew in between (`heap` lines). Neither
changes the gateway's code; tracemalloc makes the gateways several times slower and inflates their RSS, so
compare its figures only with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import httpx
from _common import emit, percentile

from gateway.db import Database, migrate
from gateway.ledger.invariants import check_invariants
from gateway.limits.invariants import check_limit_invariants
from harness.cluster import GatewayProcess, Operator, free_port, gateway_env
from harness.nginx import Nginx, nginx_binary

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
ADMIN = "soak-admin-" + uuid.uuid4().hex[:12]
MINI, FALLBACK = "gpt-4o-mini", "claude-haiku-4-5"
MAX_TOKENS = 50  # $0.05 worst case at $0.001 per output token (harness.cluster.USD_PER_TOKEN_OUT)
USERS = [f"u{i}" for i in range(8)]
BLOCKED_BUDGET, BLOCKED_SERVED = "0.20", 4  # $0.20 / $0.05
MINI_BUDGET, MINI_SERVED = "0.50", 10
BIG = "1000000"

# kind -> (weight, tenant). Weights are shares of the requests started.
KINDS: dict[str, tuple[int, str]] = {
    "json_unified": (24, "unified"),
    "sse_unified": (14, "unified"),
    "sse_long": (3, "unified"),
    "sse_abort": (3, "unified"),
    "json_byok": (16, "byok"),
    "sse_byok": (14, "byok"),
    "blocked": (12, "blocked"),
    "fallback_json": (7, "fallback"),
    "fallback_sse": (7, "fallback"),
}

FAKE = """
import threading, time, uvicorn
from harness.fakes import {factory}
app = {factory}({args})
def forget():  # a fake records every request it receives: over a soak that would be the fake's own leak
    while True:
        time.sleep(5)
        app.recorder.clear()
threading.Thread(target=forget, daemon=True).start()
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="error", access_log=False, timeout_keep_alive=30)
"""

# `python -c HEAP_BOOT serve --host .. --port ..`: the gateway's own CLI, plus a SIGUSR1 handler that dumps heap
# statistics into the working directory (heap-<n>.json, and heap-<n>.tm with tracemalloc).
HEAP_BOOT = """
import collections, gc, json, os, signal, sys, tracemalloc
frames = int(os.environ.get("SOAK_TRACEMALLOC_FRAMES") or 0)
if frames:
    tracemalloc.start(frames)
seq = [0]
def dump(signum, frame):
    seq[0] += 1
    n = seq[0]
    gc.collect()
    if tracemalloc.is_tracing():  # first, before this handler allocates anything itself
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        snapshot.dump(f"heap-{n}.tm.part")
        del snapshot
        os.replace(f"heap-{n}.tm.part", f"heap-{n}.tm")
    objects = gc.get_objects()
    types = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
    with open(f"heap-{n}.json.part", "w") as out:
        json.dump({"objects": len(objects), "types": types.most_common(3000), "garbage": len(gc.garbage)}, out)
    os.replace(f"heap-{n}.json.part", f"heap-{n}.json")
    del objects
signal.signal(signal.SIGUSR1, dump)
from gateway.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _die_with_parent() -> None:
    """In a child before exec: SIGTERM when the soak itself dies, even by SIGKILL (prctl PR_SET_PDEATHSIG)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


class SoakGateway(GatewayProcess):
    """harness.cluster.GatewayProcess, started in its own session (the soak stops it, not the terminal's Ctrl-C),
    tied to the soak's life, and optionally through HEAP_BOOT."""

    def __init__(self, env: dict[str, str], heap: bool) -> None:
        super().__init__(env)
        self.heap = heap
        self.dumps = 0

    def start(self) -> SoakGateway:
        entry = ["-c", HEAP_BOOT] if self.heap else ["-m", "gateway.cli"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [PY, *entry, "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env={**self.env, "SPENDGATE_DATA_DIR": str(self.workdir / "data"), "PYTHONPATH": str(ROOT)},
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        return self

    def heap_dump(self, timeout: float = 60.0) -> Path | None:
        """SIGUSR1, then wait for heap-<n>.json."""
        if not self.heap:
            return None
        self.dumps += 1
        path = self.workdir / f"heap-{self.dumps}.json"
        self.signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return path if path.exists() else None


def spawn_fake(factory: str, args: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([PY, "-c", FAKE.format(factory=factory, args=args, port=port)], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_die_with_parent)


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: exited {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {within}s")


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def admin_sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "gateway").splitlines()]
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "uncommitted_gateway_files": dirty}


# -- per-process figures ------------------------------------------------------------------------------------------


def proc_figures(pid: int) -> dict[str, float]:
    """VmRSS and RssAnon (MB), open fds, CPU seconds of one process, from /proc."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon"):
                out[name] = round(int(value.split()[0]) / 1024, 1)
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        out["cpu_s"] = round((int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"), 1)
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


METRIC = re.compile(r'^(spendgate_holds_open|spendgate_log_queue_depth|spendgate_db_pool_connections)'
                    r'(?:\{state="(\w+)"\})? ([0-9.e+-]+)$', re.M)


async def gauges(session: aiohttp.ClientSession, gateway: GatewayProcess) -> dict[str, float]:
    try:
        async with session.get(gateway.url + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r:
            text = await r.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    found = {}
    for name, state, value in METRIC.findall(text):
        key = {"spendgate_holds_open": "holds_open", "spendgate_log_queue_depth": "log_queue"}.get(name)
        if key:
            found[key] = float(value)
        elif state == "in_use":
            found["pool_in_use"] = float(value)
    return found


# -- traffic ------------------------------------------------------------------------------------------------------


@dataclass
class Stats:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    samples: list[dict[str, Any]] = field(default_factory=list)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    served_by: Counter[str] = field(default_factory=Counter)  # fallback tenant: provider that served
    blocked_served: int = 0
    started: int = 0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def error(self, kind: str, cause: str, detail: str = "") -> None:
        self.errors[cause] += 1
        if len(self.samples) < 30:
            self.samples.append({"kind": kind, "cause": cause, "detail": detail[:300], "t": round(time.time(), 1)})


class Pacer:
    """At most `rate` request starts per second over all workers (0: no limit), without catching up a backlog."""

    def __init__(self, rate: float) -> None:
        self.interval = 1 / rate if rate > 0 else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        self.next = max(self.next + self.interval, now)
        if self.next > now:
            await asyncio.sleep(self.next - now)


@dataclass
class Load:
    lb: str
    tenants: dict[str, str]  # tenant -> account id
    stats: Stats

    def url(self, tenant: str, compat: bool = False) -> str:
        tail = "compat/chat/completions" if compat else "openai/chat/completions"
        return f"{self.lb}/v1/{self.tenants[tenant]}/g/{tail}"

    async def one(self, session: aiohttp.ClientSession, kind: str, rng: random.Random) -> None:
        tenant = KINDS[kind][1]
        user = rng.choice(USERS)
        stream = kind.startswith("sse") or kind == "fallback_sse"
        compat = tenant == "fallback"
        output = 20 if tenant in ("unified", "byok") else MAX_TOKENS
        headers = {"content-type": "application/json", "cf-aig-metadata": json.dumps({"user": user}),
                   "x-fake-usage": json.dumps({"input": 5, "output": output})}
        if tenant in ("byok", "blocked"):
            headers["Authorization"] = f"Bearer sk-soak-{user}"  # the client's own key: BYOK
        delay = {"sse_long": 200, "sse_abort": 100}.get(kind, 5 if stream else 0)
        if delay:
            headers["x-fake-chunk-delay-ms"] = str(delay)
        body: dict[str, Any] = {
            "model": f"openai/{MINI}" if compat else MINI, "max_tokens": MAX_TOKENS, "stream": stream,
            "messages": [{"role": "user", "content": f"soak {kind} request from {user} number {rng.randrange(10**6)}"}],
        }
        if stream and kind != "sse_byok":
            body["stream_options"] = {"include_usage": True}
        self.stats.started += 1
        began = time.perf_counter()
        try:
            async with session.post(self.url(tenant, compat), json=body, headers=headers) as r:
                status = r.status
                if status == 200 and stream:
                    problem = await self.read_stream(r, kind)
                else:
                    problem = await self.read_json(r, kind, output)
                if status == 200 and compat:
                    self.stats.served_by[r.headers.get("cf-aig-provider", "?")] += 1
        except TimeoutError:
            self.stats.statuses[(kind, -1)] += 1
            self.stats.error(kind, "timeout", "no complete answer within the client timeout")
            return
        except aiohttp.ClientError as exc:
            self.stats.statuses[(kind, -1)] += 1
            self.stats.error(kind, type(exc).__name__, str(exc))
            return
        except Exception as exc:  # e.g. a stream event that is not JSON: counted, the worker goes on
            self.stats.statuses[(kind, -1)] += 1
            self.stats.error(kind, f"exception_{type(exc).__name__}", repr(exc))
            return
        self.stats.statuses[(kind, status)] += 1
        self.stats.latency[kind].append((time.perf_counter() - began) * 1000)
        if kind == "blocked" and status == 200:
            self.stats.blocked_served += 1
        expected = (200, 429) if kind == "blocked" else (200,)
        if status not in expected:
            self.stats.error(kind, f"status_{status}", problem or "")
        elif problem:
            self.stats.error(kind, "bad_answer", problem)

    async def read_json(self, r: aiohttp.ClientResponse, kind: str, output: int) -> str | None:
        text = await r.text()
        try:
            data = json.loads(text)
        except ValueError:
            return f"not JSON: {text[:200]}"
        if r.status == 429:
            if data.get("error", {}).get("message") != "Spending limit exceeded":
                return f"429 not from the spend limit: {text[:200]}"
            return None
        if r.status != 200:
            return text[:300]
        content = ((data.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
        if not content.startswith("Hello from fake-"):
            return f"unexpected content: {text[:200]}"
        cost = r.headers.get("cf-aig-cost")
        if cost is not None and Decimal(cost) != Decimal(output) / 1000:
            return f"cf-aig-cost {cost}, expected {Decimal(output) / 1000}"
        return None

    async def read_stream(self, r: aiohttp.ClientResponse, kind: str) -> str | None:
        text, done, usage_chunks = [], False, 0
        async for raw in r.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                continue
            chunk = json.loads(data)
            if not chunk.get("choices"):
                usage_chunks += 1
            for choice in chunk.get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
            if kind == "sse_abort":
                r.close()  # the client goes away after the first event
                return None
        reply = "".join(text)
        if not done:
            return f"stream ended without [DONE] after {reply[:100]!r}"
        if not reply.startswith("Hello from fake-"):
            return f"unexpected stream text {reply[:100]!r}"
        if kind == "sse_byok" and usage_chunks:
            return "the usage chunk the gateway asked for was passed to a client that did not ask for it"
        return None


async def traffic(load: Load, gateways: list[SoakGateway], lb: Nginx, args: argparse.Namespace) -> dict[str, Any]:
    stats = load.stats
    samples: list[dict[str, Any]] = []
    names = list(KINDS)
    weights = [KINDS[k][0] for k in names]
    pacer = Pacer(args.rate)
    began = time.monotonic()
    stop_at = began + args.duration
    died: list[str] = []
    gate = asyncio.Event()  # cleared while the gateways dump their heaps (--heap): no call waits on a frozen loop
    gate.set()
    idle = asyncio.Event()  # set while no call is in flight
    inflight = [0]

    connector = aiohttp.TCPConnector(limit=args.concurrency + 4, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with (aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                aiohttp.ClientSession() as monitor):

        async def worker(n: int) -> None:
            rng = random.Random(args.seed * 1000 + n)
            while time.monotonic() < stop_at and not died:
                await gate.wait()
                await pacer.wait()
                if time.monotonic() >= stop_at:
                    break
                inflight[0] += 1
                idle.clear()
                try:
                    await load.one(session, rng.choices(names, weights)[0], rng)
                finally:
                    inflight[0] -= 1
                    if not inflight[0]:
                        idle.set()

        async def sample(phase: str, last: dict[str, Any] | None) -> dict[str, Any]:
            if args.heap and phase in ("start", "end"):
                # the dump blocks a gateway's event loop for seconds: pause the load, let calls finish, dump, resume
                gate.clear()
                if inflight[0]:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(idle.wait(), args.request_timeout + 5)
                await asyncio.gather(*(asyncio.to_thread(g.heap_dump) for g in gateways))
                gate.set()
            # after a dump: taking one grows the RSS (tracemalloc's snapshot), so that start and end compare alike
            now = time.monotonic()
            figures = [proc_figures(g.pid) for g in gateways]
            metrics = await asyncio.gather(*(gauges(monitor, g) for g in gateways))
            requests = stats.requests
            elapsed = now - (last["_at"] if last else began)
            record = {
                "bench": "soak", "event": "sample", "phase": phase, "t_s": round(now - began, 1),
                "rss_mb": [f.get("VmRSS") for f in figures], "rss_anon_mb": [f.get("RssAnon") for f in figures],
                "fds": [f.get("fds") for f in figures], "cpu_s": [f.get("cpu_s") for f in figures],
                "holds_open": [m.get("holds_open") for m in metrics],
                "log_queue": [m.get("log_queue") for m in metrics],
                "pool_in_use": [m.get("pool_in_use") for m in metrics],
                "nginx_rss_mb": nginx_rss(lb),
                "requests": requests, "errors": sum(stats.errors.values()),
                "rps": round((requests - (last["requests"] if last else 0)) / elapsed, 1) if elapsed else None,
            }
            emit(record)
            samples.append(record)
            return {**record, "_at": now}

        async def watch() -> None:
            """Samples, and a dead gateway stops the run."""
            last = None
            await asyncio.sleep(max(0.0, began + args.warmup - time.monotonic()))
            last = await sample("start", last)
            next_at = began + args.sample_every
            while True:
                while time.monotonic() < min(next_at, stop_at):
                    for g in gateways:
                        if g.process is not None and g.process.poll() is not None:
                            died.append(f"gateway {g.port} exited with {g.process.returncode}")
                            return
                    await asyncio.sleep(0.5)
                if time.monotonic() >= stop_at - 1:
                    return
                last = await sample("minute", last)
                next_at += args.sample_every

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(worker(n) for n in range(args.concurrency)))
        traffic_s = time.monotonic() - began  # the workers have finished their last calls
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher

        # in-flight calls are done; every instance must settle what it holds and flush its log rows
        drained_within = None
        drain_began = time.monotonic()
        while time.monotonic() - drain_began < 60:
            metrics = await asyncio.gather(*(gauges(monitor, g) for g in gateways))
            if all(m.get("holds_open") == 0 and m.get("log_queue") == 0 for m in metrics):
                drained_within = round(time.monotonic() - drain_began, 1)
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(args.settle_pause)  # idle a moment before the "end" sample
        end = await sample("end", None)
    return {"samples": samples, "end": end, "traffic_s": traffic_s, "drained_within_s": drained_within,
            "died": died}


def nginx_rss(lb: Nginx) -> float | None:
    """nginx master + workers, MB."""
    if lb.process is None:
        return None
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(stat[1]) == lb.process.pid or int(entry.name) == lb.process.pid:
                total += proc_figures(int(entry.name)).get("VmRSS", 0.0)
        except (OSError, ValueError, IndexError):
            continue
    return round(total, 1)


# -- after the traffic --------------------------------------------------------------------------------------------


async def database_checks(url: str, tenants: dict[str, str]) -> dict[str, Any]:
    db = await Database.connect(url, min_size=1, max_size=2)
    try:
        ledger = await check_invariants(db)
        limits = await check_limit_invariants(db)
        pool = db.pool
        return {
            "ledger_invariants": ledger,
            "limit_invariants": limits,
            "reservations_pending": await pool.fetchval(
                "SELECT count(*) FROM limits.reservations WHERE settled_at IS NULL"),
            "holds_open": await pool.fetchval("SELECT count(*) FROM ledger.open_holds"),
            "buckets_with_pending": await pool.fetchval("SELECT count(*) FROM limits.buckets WHERE pending <> 0"),
            "ledger_accounts_with_pending": await pool.fetchval(
                "SELECT count(*) FROM ledger.accounts WHERE debits_pending <> 0 OR credits_pending <> 0"),
            "reservations": await pool.fetchval("SELECT count(*) FROM limits.reservations"),
            "reservation_outcomes": {r["outcome"]: r["n"] for r in await pool.fetch(
                "SELECT outcome, count(*) AS n FROM limits.reservations GROUP BY outcome ORDER BY outcome")},
            "request_logs": await pool.fetchval(
                "SELECT count(*) FROM request_logs WHERE account_id = ANY($1::text[])", list(tenants.values())),
            "request_log_statuses": {str(r["status_code"]): r["n"] for r in await pool.fetch(
                "SELECT status_code, count(*) AS n FROM request_logs WHERE account_id = ANY($1::text[]) "
                "GROUP BY status_code ORDER BY status_code", list(tenants.values()))},
        }
    finally:
        await db.close()


def money_checks(operator: Operator, tenants: dict[str, str], rules: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Bucket spend through the admin API: exact counts where the budget decides, and for the unified tenants the
    credits debited equal the spend their all-covering rule counted."""
    def spent(tenant: str, rule: str) -> Decimal:
        return sum((Decimal(b["spent_usd"]) for b in operator.buckets(tenants[tenant], rules[rule]["id"])),
                   Decimal(0))

    out: dict[str, Any] = {
        "blocked_spent_usd": str(spent("blocked", "blocked")),
        "fallback_first_model_spent_usd": str(spent("fallback", "mini")),
    }
    for tenant, rule in (("unified", "unified"), ("fallback", "fallback_watch")):
        credits = operator.credits(tenants[tenant])
        debited = Decimal(BIG) - Decimal(credits["balance_usd"])
        out[f"{tenant}_debited_usd"] = str(debited)
        out[f"{tenant}_bucket_spent_usd"] = str(spent(tenant, rule))
        out[f"{tenant}_credits_pending_usd"] = credits["pending_usd"]
    return out


def setup_tenants(operator: Operator) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    per_user = {"metadata.user": {"split": True}}
    tenants = {
        "unified": operator.new_account(credits_usd=BIG),
        "byok": operator.new_account(log_payloads=False),
        "blocked": operator.new_account(),
        "fallback": operator.new_account(credits_usd=BIG, models=(MINI, FALLBACK)),
    }
    rules = {
        "unified": operator.rule(tenants["unified"], name="per-user", budget_usd=BIG, window="daily",
                                 scope=per_user),
        "byok": operator.rule(tenants["byok"], name="per-user", budget_usd=BIG, window="daily", scope=per_user),
        "byok_watch": operator.rule(tenants["byok"], name="watch", budget_usd="1.00", window="daily",
                                    action="monitor"),
        "blocked": operator.rule(tenants["blocked"], name="small", budget_usd=BLOCKED_BUDGET, window="daily"),
        "mini": operator.rule(tenants["fallback"], name="mini", budget_usd=MINI_BUDGET, window="daily",
                              scope={"model": {"equals": f"openai/{MINI}"}},
                              action={"fallback_model": f"anthropic/{FALLBACK}"}),
        "fallback_watch": operator.rule(tenants["fallback"], name="all", budget_usd=BIG, window="daily",
                                        action="monitor"),
    }
    return tenants, rules


def access_share(lb: Nginx) -> dict[str, Any]:
    share: Counter[str] = Counter()
    retried = not_from_gateway = 0
    for entry in lb.access():
        if not entry["uri"].startswith("/v1/"):
            continue
        share[entry["upstream"]] += 1
        retried += "," in entry["upstream"]
        not_from_gateway += str(entry["status"]) != entry["upstream_status"]
    return {"by_upstream": dict(sorted(share.items())), "retried_on_second_instance": retried,
            "answered_by_nginx_itself": not_from_gateway}


def heap_growth(gateways: list[SoakGateway]) -> None:
    import tracemalloc

    for i, g in enumerate(gateways):
        first, last = g.workdir / "heap-1.json", g.workdir / f"heap-{g.dumps}.json"
        if g.dumps < 2 or not (first.exists() and last.exists()):
            continue
        a, b = json.loads(first.read_text()), json.loads(last.read_text())
        before, after = dict(a["types"]), dict(b["types"])
        growth = sorted(((after.get(t, 0) - before.get(t, 0), t) for t in set(before) | set(after)), reverse=True)
        record: dict[str, Any] = {
            "bench": "soak", "event": "heap", "instance": i, "objects": [a["objects"], b["objects"]],
            "types_growth": [[t, d] for d, t in growth[:25] if d > 0],
        }
        tm_first, tm_last = g.workdir / "heap-1.tm", g.workdir / f"heap-{g.dumps}.tm"
        if tm_first.exists() and tm_last.exists():
            diff = tracemalloc.Snapshot.load(str(tm_last)).compare_to(
                tracemalloc.Snapshot.load(str(tm_first)), "traceback")
            record["tracemalloc_growth"] = [
                {"kb": round(s.size_diff / 1024, 1), "count": s.count_diff,
                 "where": [f"{f.filename.removeprefix(str(ROOT) + '/')}:{f.lineno}" for f in s.traceback][::-1][:6]}
                for s in [d for d in diff if d.size_diff > 0][:15]]
        emit(record)


# -- main ---------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if nginx_binary() is None:
        raise SystemExit("nginx is not installed (apt-get install nginx-light)")
    name = f"soak_{uuid.uuid4().hex[:10]}"
    db_url = with_database(args.server, name)
    fakes: list[subprocess.Popen[bytes]] = []
    gateways: list[SoakGateway] = []
    lb: Nginx | None = None
    created = ok = False
    workdir = Path(tempfile.mkdtemp(prefix="spendgate-soak-"))
    problems: list[dict[str, Any]] = []
    try:
        asyncio.run(admin_sql(args.server, f'CREATE DATABASE "{name}"'))
        created = True
        migrate(db_url)
        ports = {"openai": free_port(), "anthropic": free_port()}
        logs = {p: workdir / f"fake-{p}.log" for p in ports}
        fakes.append(spawn_fake("openai_app", '"/v1"', ports["openai"], logs["openai"]))
        fakes.append(spawn_fake("anthropic_app", "", ports["anthropic"], logs["anthropic"]))
        for process, provider in zip(fakes, ports, strict=True):
            wait_http(f"http://127.0.0.1:{ports[provider]}/", process, logs[provider])
        upstreams = {"openai": f"http://127.0.0.1:{ports['openai']}/v1",
                     "anthropic": f"http://127.0.0.1:{ports['anthropic']}"}
        env = gateway_env(db_url, ADMIN, upstreams, SPENDGATE_TRUSTED_PROXIES="127.0.0.1",
                          SPENDGATE_DB_POOL_MAX=str(args.pool_max),
                          SOAK_TRACEMALLOC_FRAMES=str(args.tracemalloc if args.heap else 0))
        gateways = [SoakGateway(env, heap=args.heap) for _ in range(3)]
        for g in gateways:
            g.start()
        for g in gateways:
            g.wait_ready(90)
        lb = Nginx([f"127.0.0.1:{g.port}" for g in gateways]).start()
        operator = Operator(lb.url, ADMIN)
        tenants, rules = setup_tenants(operator)
        emit({"bench": "soak", "event": "setup", "git": git_state(), "database": name, "nginx": lb.url,
              "gateways": [{"port": g.port, "pid": g.pid, "dir": str(g.workdir)} for g in gateways],
              "pool_max": args.pool_max, "duration_s": args.duration, "warmup_s": args.warmup,
              "concurrency": args.concurrency, "rate_limit_rps": args.rate, "tenants": tenants,
              "kinds": {k: w for k, (w, _) in KINDS.items()}, "heap": args.heap, "tracemalloc": args.tracemalloc,
              "cpus": os.cpu_count(), "loadavg": os.getloadavg()})

        stats = Stats()
        result = asyncio.run(traffic(Load(lb.url, tenants, stats), gateways, lb, args))
        samples, end = result["samples"], result["end"]
        requests = stats.requests
        by_kind: dict[str, dict[str, int]] = defaultdict(dict)
        by_status: Counter[str] = Counter()
        for (kind, status), n in sorted(stats.statuses.items()):
            label = "failed" if status == -1 else str(status)
            by_kind[kind][label] = n
            by_status[label] += n
        errors = sum(stats.errors.values())
        emit({"bench": "soak", "event": "traffic", "traffic_s": round(result["traffic_s"], 1), "requests": requests,
              "rps": round(requests / result["traffic_s"], 1), "by_kind": by_kind, "by_status": dict(by_status),
              "errors": errors, "errors_by_cause": dict(stats.errors), "error_samples": stats.samples,
              "fallback_served_by": dict(stats.served_by), "blocked_served": stats.blocked_served,
              "latency_ms": {k: {"p50": round(percentile(v, 0.5), 1), "p99": round(percentile(v, 0.99), 1)}
                             for k, v in sorted(stats.latency.items())},
              "nginx": access_share(lb), "drained_within_s": result["drained_within_s"], "died": result["died"],
              "loadavg": os.getloadavg()})

        checks = asyncio.run(database_checks(db_url, tenants))
        checks.update(money_checks(operator, tenants, rules))
        answered = requests - sum(n for (_, s), n in stats.statuses.items() if s == -1)
        failed = [f"ledger: {v}" for v in checks["ledger_invariants"]] + \
                 [f"limits: {v}" for v in checks["limit_invariants"]]
        for key in ("reservations_pending", "holds_open", "buckets_with_pending", "ledger_accounts_with_pending"):
            if checks[key]:
                failed.append(f"{key}: {checks[key]}")
        if any(end["holds_open"]) or result["drained_within_s"] is None:
            failed.append(f"instances did not drain: holds_open {end['holds_open']} log_queue {end['log_queue']}")
        if stats.blocked_served != BLOCKED_SERVED or Decimal(checks["blocked_spent_usd"]) != Decimal(BLOCKED_BUDGET):
            failed.append(f"blocked tenant: {stats.blocked_served} served, {checks['blocked_spent_usd']} spent "
                          f"(expected {BLOCKED_SERVED}, {BLOCKED_BUDGET})")
        if stats.served_by.get("openai", 0) != MINI_SERVED or \
                Decimal(checks["fallback_first_model_spent_usd"]) != Decimal(MINI_BUDGET):
            failed.append(f"fallback tenant: {stats.served_by.get('openai', 0)} served on {MINI}, "
                          f"{checks['fallback_first_model_spent_usd']} spent (expected {MINI_SERVED}, {MINI_BUDGET})")
        for tenant in ("unified", "fallback"):
            if Decimal(checks[f"{tenant}_debited_usd"]) != Decimal(checks[f"{tenant}_bucket_spent_usd"]):
                failed.append(f"{tenant}: credits debited {checks[f'{tenant}_debited_usd']} but buckets counted "
                              f"{checks[f'{tenant}_bucket_spent_usd']}")
        # every request that reached a gateway has its row (one the client gave up on too, as 499/504)
        if not answered <= checks["request_logs"] <= requests:
            failed.append(f"request_logs has {checks['request_logs']} rows for {requests} requests sent, "
                          f"{answered} answered")
        emit({"bench": "soak", "event": "checks", **checks, "failed": failed})
        if args.heap:
            heap_growth(gateways)

        start = next((s for s in samples if s["phase"] == "start"), end)
        minutes = [s for s in samples if s["phase"] in ("start", "minute")]
        emit({"bench": "soak", "duration_s": round(result["traffic_s"], 1), "requests": requests, "errors": errors,
              "rps": round(requests / result["traffic_s"], 1),
              "rss_mb": {"start": start["rss_mb"], "end": end["rss_mb"],
                         "per_minute": [[s["t_s"], s["rss_mb"]] for s in minutes]},
              "rss_growth_mb": [round(b - a, 1) if a is not None and b is not None else None
                                for a, b in zip(start["rss_mb"], end["rss_mb"], strict=True)],
              "invariants": "ok" if not failed else failed})
        ok = not failed and not errors and not result["died"]
    finally:
        if lb is not None:
            lb.stop()
        for g in gateways:
            g.signal(signal.SIGTERM)
        codes = [g.stop(30) for g in gateways]
        for process in fakes:
            if process.poll() is None:
                process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        levels: list[dict[str, int]] = []
        for g, code in zip(gateways, codes, strict=False):
            log = g.log_path.read_text(errors="replace") if g.log_path.exists() else ""
            counted: Counter[str] = Counter(re.findall(r'"level": "(\w+)"', log))
            levels.append(dict(counted))
            bad = [line for line in log.splitlines()
                   if '"level": "error"' in line or '"level": "critical"' in line or "Traceback" in line]
            # uvicorn re-raises the SIGTERM it caught once its graceful shutdown is done: -15 is a clean exit
            if code not in (0, -signal.SIGTERM) or bad:
                problems.append({"port": g.port, "exit": code, "error_lines": len(bad), "first": bad[:3],
                                 "log": str(g.log_path)})
        if gateways:
            emit({"bench": "soak", "event": "shutdown", "gateway_exit_codes": codes, "log_lines_by_level": levels,
                  "problems": problems})
        if created:
            asyncio.run(admin_sql(args.server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        if lb is not None:
            shutil.rmtree(lb.workdir, ignore_errors=True)
        for path in [workdir, *(g.workdir for g in gateways)]:
            if ok and not problems:
                shutil.rmtree(path, ignore_errors=True)
        if not (ok and not problems):
            print(f"soak: logs kept in {workdir} and {[str(g.workdir) for g in gateways]}", file=sys.stderr)
    return 0 if ok and not problems else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of traffic (warm-up included)")
    parser.add_argument("--warmup", type=float, default=30, help="seconds of traffic before the 'start' sample")
    parser.add_argument("--sample-every", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=250, help="request starts per second in total (0: no limit)")
    parser.add_argument("--request-timeout", type=float, default=30)
    parser.add_argument("--settle-pause", type=float, default=5, help="idle seconds before the 'end' sample")
    parser.add_argument("--pool-max", type=int, default=10, help="SPENDGATE_DB_POOL_MAX per instance")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--server", default=os.environ.get("SOAK_DATABASE_SERVER",
                                                           "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="a maintenance database URL; the soak creates and drops its own database there")
    parser.add_argument("--heap", action="store_true",
                        help="dump live-object counts per type at the start and at the end")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="FRAMES",
                        help="with --heap: tracemalloc snapshots too, FRAMES deep")
    args = parser.parse_args()
    if args.warmup >= args.duration:
        parser.error("--warmup must be shorter than --duration")

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    # Ctrl-C stops the soak even where it was started with SIGINT ignored (a background job of a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = run(args)
    except KeyboardInterrupt:
        print("soak: interrupted; everything stopped and the database dropped", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
