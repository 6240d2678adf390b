"""Side by side: Spendgate, LiteLLM's proxy and Portkey's gateway in front of the same fake OpenAI upstream.

    .venv/bin/python bench/peers.py [--seconds 10] [--warmup 2] [--only direct,spendgate,litellm,portkey]
                                    [--modes json,sse] [--connections 1,32] [--peers-dir bench/.peers] [--rev REV]

Not part of `make bench`: the first run downloads the peers. LiteLLM (`litellm[proxy]`, pinned by
--litellm-version) is installed from PyPI into its own virtualenv and Portkey (`@portkey-ai/gateway`, pinned by
--portkey-version) from npm, both under --peers-dir (default bench/.peers/, ignored by git); later runs reuse
them. No peer code is kept in the repository.

One fake OpenAI upstream (`harness.fakes.openai_app`, uvicorn, its own process) serves every gateway; the load
comes from this process (aiohttp), the same generator for all. Each gateway is started, checked to forward to
the fake (the first JSON and SSE answers must be the fake's), then for each mode (json, sse: `stream: true`) and
connection count gets a warm-up (--warmup) and a timed window (--seconds), and is stopped again:

  direct     the fake alone, no gateway: the ceiling of this machine's upstream and load generator
  spendgate  `spendgate serve` (the working tree's code, or --rev's exported) against a fresh `bench_peers_*`
             database (BENCH_DATABASE_URL, TEST_DATABASE_URL or 127.0.0.1:5432; dropped at the end): "byok"
             (the client's own key passed through, no rules) and "unified+5rules" (the gateway's own key
             from SPENDGATE_KEY_OPENAI, credits topped up, a hold and a settlement per request, 5 spend-limit
             rules matching every request, created through the admin API as bench/limits.py does); request
             logging on, as shipped. "unified+5rules-nodb" (only when asked for in --setups): the same unified
             setup on a second `spendgate serve` whose reservations and settlements are answered in memory
             (a `sitecustomize` of this bench replaces `Limits._call`; nothing else changes, the request log
             still goes to Postgres): the bound of what any change to the database path could reach
  litellm    `litellm --config config.yaml --num_workers 1`, no database: one model_list entry
             (`openai/gpt-4o-mini`, api_base the fake, a fixed upstream key), a master key the client sends
  portkey    `node build/start-server.js --headless`, the client sends `x-portkey-provider: openai`,
             `x-portkey-custom-host: <fake>/v1` and its own key (pass-through)

One JSON line per (gateway, setup, mode, connections):

  {"bench":"peers","gateway":"litellm","mode":"json","connections":32,"rps":N,"p50_ms":x,"p99_ms":y,
   "gateway_cpu_ms":c,"upstream_cpu_ms":u,"client_cpu_ms":l,"requests":N,"errors":0,...}

`gateway_cpu_ms` is the user+system CPU time of the gateway process and its children over the timed window
(psutil, sampled 0.3 s after the warm-up and after the window's last answer, so background work of the
window's requests is in it), divided by the requests answered. For Spendgate `postgres_cpu_ms` adds the
Postgres processes: the backends connected to its database plus the server's own processes (WAL writer,
checkpointer...); backends of other databases (other work on a shared server) are reported apart in
`pg_other_dbs_cpu_ms`. `machine_busy_cores` and `unattributed_cpu_ms` say how much else ran during the window.
A last line, {"bench":"peers","summary":true,...}, repeats req/s and serving CPU per request (gateway + its
Postgres) per mode/connections, and Spendgate's unified-billing req/s over its BYOK req/s (`unified_over_byok`;
with the bound measured, `unified_nodb_over_byok` too).
A gateway that cannot be installed, started or verified gets a line with "skipped": true and the reason; the
others still run. Every process started here is stopped at the end, also on Ctrl-C, SIGTERM and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil
from _common import emit, percentile

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MODEL = "gpt-4o-mini"
ADMIN = "bench-admin"
FAKE_SAYS = "Hello from fake-openai:"
LITELLM_VERSION = "1.106.12"  # the newest whose [proxy] extra installs from PyPI alone (later ones need litellm-proxy)
PORTKEY_VERSION = "1.15.2"
# With the newest @hono/node-server 1.x, which npm resolves by default (1.19.19), Portkey answers every SSE
# request with HTTP 500 "Something went wrong" ("TypeError: immutable" in its updateHeaders: the server's
# lightweight Response keeps the upstream's immutable headers; Portkey's issue #1389). 1.14.2, the last version
# that issue reports working, fails the same way; 1.13.8 serves JSON and SSE, so the install pins it.
PORTKEY_OVERRIDES = {"@hono/node-server": "1.13.8"}
LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

UPSTREAM = """
import collections, uvicorn
from harness.fakes import openai_app
app = openai_app("/v1")
# the fake records every request it gets; a bounded record keeps its memory and GC flat over a long run
app.recorder.requests = app.state.requests = collections.deque(maxlen=64)
app.recorder.seen = collections.deque(maxlen=64)
uvicorn.run(app, host="127.0.0.1", port={port}, log_level="error", access_log=False)
"""

# The 5 rules of bench/limits.py with 5 rules (every one matches every request of the hot user); budgets that
# never block, so the window measures the reservation path, not refusals.
SCOPES: list[dict[str, Any]] = [
    {},
    {"metadata.user_id": {"split": True}},
    {"model": {"equals": f"openai/{MODEL}"}},
    {"provider": {"split": True}},
    {"metadata.user_id": {"split": True}, "model": {"equals": f"openai/{MODEL}"}},
]
WINDOWS = ("daily", "weekly", "monthly")


def rule_specs(n: int) -> list[dict[str, Any]]:
    specs = []
    for i in range(n):
        spec: dict[str, Any] = {"name": f"bench-{i}", "budget_usd": "1000000", "scope": SCOPES[i % len(SCOPES)],
                                "window": WINDOWS[(i + i // len(SCOPES)) % len(WINDOWS)],
                                "window_type": "rolling" if i % 2 else "fixed"}
        if i % 3 == 2:
            spec["alert_at"] = [0.5, 0.9]
        specs.append(spec)
    return specs


MEASURED: list[dict[str, Any]] = []  # every row of this run, for the summary line


class Skip(Exception):
    """This gateway (or mode) cannot be measured; the reason goes on its JSON line."""


# -- processes -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the gateway's and databases' settings (LiteLLM would use DATABASE_URL)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPENDGATE_", "LITELLM_", "PORTKEY_")) and k not in ("DATABASE_URL", "PYTHONPATH")}
    env.update(extra)
    return env


class Proc:
    """A child in its own session (a terminal's Ctrl-C reaches only this script, which stops it), output in a
    log file; stopped by its process group id: SIGTERM, then SIGKILL."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.name, self.log_path = name, log
        with log.open("ab") as out:
            self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, grace: float = 15) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
            if self.popen.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(wait)
        # children left in the group after the leader exited (a worker, npm's node)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


class Running:
    """Everything this run started, stopped in reverse order; also the scratch databases to drop."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-peers-"))
        self.databases: list[tuple[str, str]] = []  # (server URL, name)

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Proc:
        proc = Proc(name, argv, env, cwd or self.workdir, self.workdir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop(grace=5)
        while self.databases:
            server, name = self.databases.pop()
            with contextlib.suppress(Exception):
                asyncio.run(admin_sql(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(self.workdir, ignore_errors=True)


async def wait_up(url: str, proc: Proc, within: float = 120) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise Skip(f"{proc.name} exited with code {proc.popen.returncode}: {proc.tail()}")
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status < 500:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.25)
    raise Skip(f"{proc.name} did not answer {url} within {within:.0f} s: {proc.tail()}")


async def run_logged(argv: list[str], log: Path, cwd: Path, limit_s: float, env: dict[str, str] | None = None) -> int:
    """A command with its output appended to `log`; killed (its whole group) after `limit_s` or on cancellation."""
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = await asyncio.create_subprocess_exec(*argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                                    stderr=subprocess.STDOUT, env=env or clean_env(),
                                                    start_new_session=True)
        try:
            return await asyncio.wait_for(proc.wait(), limit_s)
        except TimeoutError:
            return -1
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()


def log_tail(log: Path, n: int = 800) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines()
             if line.strip() and not line.startswith("WARNING: Location")]
    return "\n".join(lines)[-n:]


# -- installing the peers (scratch directory, reused) ----------------------------------------------------------


async def install_litellm(peers: Path, version: str) -> Path:
    """A virtualenv with litellm[proxy]==version; returns its `litellm` executable."""
    home = peers / f"litellm-{version}"
    exe = home / "venv" / "bin" / "litellm"
    if (home / "installed").exists() and exe.exists():
        return exe
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    log = home / "install.log"
    base = shutil.which("python3") or PY
    if await run_logged([base, "-m", "venv", str(home / "venv")], log, home, 300) != 0:
        raise Skip(f"could not create a virtualenv for LiteLLM: {log_tail(log)}")
    pip = [str(home / "venv" / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
    if await run_logged([*pip, f"litellm[proxy]=={version}"], log, home, 1200) != 0 or not exe.exists():
        raise Skip(f"pip install litellm[proxy]=={version} failed: {log_tail(log)}")
    (home / "installed").write_text(f"litellm[proxy]=={version}\n")
    return exe


async def install_portkey(peers: Path, version: str) -> Path:
    """@portkey-ai/gateway@version in a private npm project; returns its start-server.js."""
    home = peers / f"portkey-{version}"
    script = home / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
    marker = f"@portkey-ai/gateway@{version} {json.dumps(PORTKEY_OVERRIDES)}\n"
    if (home / "installed").exists() and (home / "installed").read_text() == marker and script.exists():
        return script
    npm, node = shutil.which("npm"), shutil.which("node")
    if not npm or not node:
        raise Skip("npm or node is not on PATH")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "package.json").write_text(json.dumps({
        "name": "bench-portkey", "private": True, "dependencies": {"@portkey-ai/gateway": version},
        "overrides": PORTKEY_OVERRIDES}, indent=2) + "\n")
    log = home / "install.log"
    # --ignore-scripts: the package's only install script is a patch-package call with no patches shipped
    argv = [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel", "error"]
    if await run_logged(argv, log, home, 900) != 0 or not script.exists():
        raise Skip(f"npm install @portkey-ai/gateway@{version} failed: {log_tail(log)}")
    (home / "installed").write_text(marker)
    return script


# -- CPU accounting --------------------------------------------------------------------------------------------

Key = tuple[int, float]  # (pid, create time): a pid reused during the window is another process


def tree_cpu(pids: list[int]) -> dict[Key, float]:
    """user+system seconds of these processes and all their descendants."""
    found: dict[Key, float] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                found[(p.pid, p.create_time())] = t.user + t.system
    return found


def postgres_cpu(database: str | None) -> dict[str, dict[Key, float]]:
    """user+system seconds of every Postgres server process (as root psutil reads the `postgres` user's),
    split by the process title: backends of `database`, backends of other databases, the server's own."""
    split: dict[str, dict[Key, float]] = {"ours": {}, "other_dbs": {}, "server": {}}
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] != "postgres":
                continue
            title = " ".join(p.info["cmdline"] or [])
            t = p.cpu_times()
            key = (p.pid, p.create_time())
        except psutil.Error:
            continue
        words = title.split()
        if database and database in words:
            group = "ours"
        elif any((w.endswith(")") and "(" in w) or w == "[local]" for w in words):
            group = "other_dbs"  # a client backend: "postgres: 15/main: USER DB HOST(PORT) STATE"
        else:
            group = "server"  # postmaster, WAL writer, checkpointer, background writer, autovacuum...
        split[group][key] = t.user + t.system
    return split


def spent(before: dict[Key, float], after: dict[Key, float]) -> float:
    """CPU seconds between two samples (a process born in between counts from zero)."""
    return sum(max(0.0, cpu - before.get(key, 0.0)) for key, cpu in after.items())


class Sample:
    def __init__(self, gateway_pids: list[int], upstream_pid: int, database: str | None) -> None:
        self.gateway = tree_cpu(gateway_pids)
        self.upstream = tree_cpu([upstream_pid])
        me = psutil.Process().cpu_times()  # this process alone: its children are the servers measured
        self.client = {(os.getpid(), 0.0): me.user + me.system}
        self.pg = postgres_cpu(database) if database else None
        cpu = psutil.cpu_times()
        self.machine_busy = sum(cpu) - cpu.idle - getattr(cpu, "iowait", 0.0)
        self.at = time.perf_counter()


def cpu_record(before: Sample, after: Sample, answered: int) -> dict[str, Any]:
    per = 1000 / max(answered, 1)
    gateway, upstream, client = (spent(before.gateway, after.gateway), spent(before.upstream, after.upstream),
                                 spent(before.client, after.client))
    record: dict[str, Any] = {"gateway_cpu_ms": round(gateway * per, 3), "upstream_cpu_ms": round(upstream * per, 3),
                              "client_cpu_ms": round(client * per, 3)}
    attributed = gateway + upstream + client
    if before.pg is not None and after.pg is not None:
        ours, server, other = (spent(before.pg[g], after.pg[g]) for g in ("ours", "server", "other_dbs"))
        record.update(postgres_cpu_ms=round((ours + server) * per, 3), pg_backends_cpu_ms=round(ours * per, 3),
                      pg_server_cpu_ms=round(server * per, 3), pg_other_dbs_cpu_ms=round(other * per, 3))
        attributed += ours + server
    wall = max(after.at - before.at, 1e-6)
    busy = after.machine_busy - before.machine_busy
    record.update(machine_busy_cores=round(busy / wall, 2),
                  unattributed_cpu_ms=round(max(0.0, busy - attributed) * per, 3))
    return record


# -- load ------------------------------------------------------------------------------------------------------


class Target:
    def __init__(self, gateway: str, setup: str | None, url: str, headers: dict[str, str], pids: list[int],
                 version: str, database: str | None = None) -> None:
        self.gateway, self.setup, self.url, self.headers = gateway, setup, url, headers
        self.pids, self.version, self.database = pids, version, database

    def body(self, stream: bool) -> bytes:
        return json.dumps({"model": MODEL, "max_tokens": 64, "stream": stream,
                           "messages": [{"role": "user", "content": "compare the gateways side by side"}]}).encode()


def fake_answer(raw: bytes, stream: bool) -> str:
    """The assistant text of a JSON answer or of an SSE stream (deltas joined)."""
    if not stream:
        return str(json.loads(raw)["choices"][0]["message"]["content"])
    text = []
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith("data:") and line[5:].strip() not in ("", "[DONE]"):
            for choice in json.loads(line[5:]).get("choices") or []:
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


async def verify(target: Target, stream: bool) -> None:
    """The first answer must come from the fake upstream (its fixed reply), else the mode is skipped."""
    headers = {"content-type": "application/json", **target.headers}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        try:
            async with session.post(target.url, data=target.body(stream), headers=headers) as r:
                raw, status = await r.read(), r.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Skip(f"first request failed: {type(exc).__name__}: {exc}") from None
    try:
        said = fake_answer(raw, stream) if status == 200 else ""
    except (ValueError, KeyError, IndexError, TypeError):
        said = ""
    if not said.startswith(FAKE_SAYS):
        raise Skip(f"the first {'SSE' if stream else 'JSON'} answer is not the fake upstream's: "
                   f"HTTP {status} {raw[:300].decode(errors='replace')}")


async def load(target: Target, stream: bool, seconds: float, connections: int) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    body = target.body(stream)
    headers = {"content-type": "application/json", **target.headers}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    async with session.post(target.url, data=body, headers=headers) as r:
                        raw = await r.read()
                        outcome = str(r.status) if r.status != 200 or b"fake-openai" in raw else "200-not-the-fake"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    outcome = type(exc).__name__
                statuses[outcome] = statuses.get(outcome, 0) + 1
                if outcome == "200":
                    latencies.append((time.perf_counter() - start) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    return {"latencies": latencies, "statuses": statuses, "elapsed": elapsed}


async def measure(target: Target, upstream: Proc, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for mode in args.modes:
        stream = mode == "sse"
        try:
            await verify(target, stream)
        except Skip as exc:
            emit(skipped(target.gateway, str(exc), setup=target.setup, mode=mode))
            continue
        for connections in args.connections:
            await load(target, stream, args.warmup, connections)
            await asyncio.sleep(0.3)  # the warm-up's background work (settlements, log rows) lands before
            before = Sample(target.pids, upstream.pid, target.database)
            result = await load(target, stream, args.seconds, connections)
            await asyncio.sleep(0.3)  # ... and the window's own lands in it
            after = Sample(target.pids, upstream.pid, target.database)
            lat = result["latencies"]
            record: dict[str, Any] = {"bench": "peers", "gateway": target.gateway}
            if target.setup:
                record["setup"] = target.setup
            record.update({
                "mode": mode, "connections": connections, "rps": round(len(lat) / result["elapsed"], 1),
                "p50_ms": round(percentile(lat, 0.5), 2), "p99_ms": round(percentile(lat, 0.99), 2),
                **cpu_record(before, after, len(lat)),
                "requests": len(lat), "errors": sum(c for s, c in result["statuses"].items() if s != "200"),
                "seconds": round(result["elapsed"], 2), "version": target.version,
            })
            if record["errors"]:
                record["statuses"] = result["statuses"]
            emit(record)
            rows.append(record)
            MEASURED.append(record)
    return rows


def skipped(gateway: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"bench": "peers", "gateway": gateway, **{k: v for k, v in extra.items() if v}, "skipped": True,
            "reason": reason[-1500:]}


# -- the gateways ----------------------------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


async def admin_sql(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def postgres_server() -> str:
    """BENCH_DATABASE_URL, TEST_DATABASE_URL, or the local server on 127.0.0.1:5432 (as bench/limits.py)."""
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") or LOCAL_SERVER
    try:
        await admin_sql(url, "SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise Skip(f"no Postgres at {url} (set BENCH_DATABASE_URL): {type(exc).__name__}: {exc}") from None
    return url


def git(*argv: str) -> str:
    done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, timeout=60)
    if done.returncode:
        raise Skip(f"git {' '.join(argv)}: {done.stderr.decode(errors='replace')[-500:]}")
    return done.stdout.decode(errors="replace").strip()


def source_tree(running: Running, rev: str | None, source: Path | None = None) -> tuple[Path, str]:
    """Where Spendgate and the fake upstream run from, and what to call that code: the working tree, with --rev
    that revision exported (`git archive`) to the scratch directory, untouched by edits in progress, or with
    --source a directory holding such a tree (two of them compare two versions of the code back to back)."""
    if source is not None:
        if not (source / "gateway" / "app.py").is_file():
            raise SystemExit(f"--source {source}: no gateway/app.py there")
        return source.resolve(), f"dir:{source}"
    if not rev:
        try:
            dirty = git("status", "--porcelain", "--untracked-files=no", "gateway", "harness/fakes")
            return ROOT, git("rev-parse", "--short", "HEAD") + ("+uncommitted" if dirty else "")
        except (Skip, OSError, subprocess.SubprocessError):
            return ROOT, "unknown"
    target = running.workdir / "src"
    target.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, capture_output=True, timeout=120)
    if archive.returncode:
        raise SystemExit(f"git archive {rev}: {archive.stderr.decode(errors='replace')}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target, git("rev-parse", "--short", rev)


# "unified+5rules-nodb": loaded by the second gateway process through PYTHONPATH before anything else. Every
# batch of reservations is granted and every settlement accepted without a round trip; the rest of the request
# path (planning, rule lines, the batcher, settlements, headers, logging) runs as shipped.
NODB = """
import gateway.limits.reservations as reservations


async def _in_memory(self, sql, items):
    if sql == reservations.RESERVE:
        return [{"id": item.id, "ok": True, "replay": False, "exceeded": [], "credit": None,
                 "state": [{"spent": 0, "pending": 0} for _ in item.lines or ()]} for item in items]
    return [{"id": item.id, "ok": True, "reason": None, "late": False, "alerts": 0, "hold": None} for item in items]


reservations.Limits._call = _in_memory
"""


async def spendgate(running: Running, upstream_url: str, upstream: Proc, args: argparse.Namespace) -> None:
    """The BYOK and unified setups on one process; the no-database bound, when asked for, on another."""
    if {"byok", "unified+5rules"} & set(args.setups):
        await spendgate_process(running, upstream_url, upstream, args, nodb=False)
    if "unified+5rules-nodb" in args.setups:
        await spendgate_process(running, upstream_url, upstream, args, nodb=True)


async def spendgate_process(running: Running, upstream_url: str, upstream: Proc, args: argparse.Namespace, *,
                            nodb: bool) -> None:
    server = await postgres_server()
    name = f"bench_peers_{uuid.uuid4().hex[:10]}"
    await admin_sql(server, f'CREATE DATABASE "{name}"')
    running.databases.append((server, name))
    port = free_port()
    env = clean_env(DATABASE_URL=_with_database(server, name), SPENDGATE_ADMIN_TOKEN=ADMIN,
                    SPENDGATE_UPSTREAM_OPENAI=upstream_url, SPENDGATE_KEY_OPENAI="sk-spendgate-own-key",
                    SPENDGATE_DATA_DIR=str(running.workdir / "spendgate-data"), PYTHONPATH=str(args.source))
    if nodb:
        patch = running.workdir / "nodb"
        patch.mkdir(exist_ok=True)
        (patch / "sitecustomize.py").write_text(NODB)
        env["PYTHONPATH"] = f"{patch}{os.pathsep}{args.source}"
    proc = running.start("spendgate-nodb" if nodb else "spendgate",
                         [PY, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)], env)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_up(f"{base}/readyz", proc)
        version = args.source_version
        async with aiohttp.ClientSession(base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
            async def post(path: str, body: dict[str, Any]) -> None:
                async with admin.post(path, json=body) as r:
                    if r.status != 201:
                        raise Skip(f"admin API {path}: HTTP {r.status} {await r.text()}")

            metadata = {"cf-aig-metadata": json.dumps({"user_id": "hot"})}
            byok, unified = f"peers-byok-{uuid.uuid4().hex[:6]}", f"peers-unified-{uuid.uuid4().hex[:6]}"
            await post("/admin/accounts", {"id": byok})
            await post("/admin/accounts", {"id": unified})
            await post(f"/admin/accounts/{unified}/credits/topups",
                       {"amount_usd": "1000000", "idempotency_key": "bench-peers-seed"})
            for spec in rule_specs(5):
                await post(f"/admin/accounts/{unified}/gateways/default/spend-limits", spec)
        setups = [
            ("byok", byok, {"Authorization": "Bearer sk-client-own-key", **metadata}),
            ("unified+5rules", unified, metadata),  # no client key: the gateway's own, billed to credits
        ] if not nodb else [("unified+5rules-nodb", unified, metadata)]
        for setup, account, headers in setups:
            if setup not in args.setups:
                continue
            target = Target("spendgate", setup, f"{base}/v1/{account}/default/openai/chat/completions", headers,
                            [proc.pid], version, name)
            await measure(target, upstream, args)
        problems = [line for line in proc.tail(200_000).splitlines()
                    if '"level": "error"' in line or '"level": "critical"' in line]
        if problems:
            print(f"spendgate logged {len(problems)} error line(s), last: {problems[-1][:500]}", file=sys.stderr)
    finally:
        running.stop(proc)


async def litellm(running: Running, upstream_url: str, upstream: Proc, args: argparse.Namespace) -> None:
    exe = await install_litellm(args.peers_dir, args.litellm_version)
    master = "sk-" + secrets.token_hex(24)
    home = running.workdir / "litellm"
    home.mkdir()
    # JSON is valid YAML: the one model the bench calls, routed to the fake; no database, no callbacks
    (home / "config.yaml").write_text(json.dumps({
        "model_list": [{"model_name": MODEL, "litellm_params": {
            "model": f"openai/{MODEL}", "api_base": upstream_url, "api_key": "sk-litellm-upstream-key"}}],
        "general_settings": {"master_key": master},
        "litellm_settings": {"telemetry": False},
    }, indent=2))
    port = free_port()
    env = clean_env(LITELLM_LOG="WARNING", LITELLM_LOCAL_MODEL_COST_MAP="True", NO_DOCS="True")
    proc = running.start("litellm", [str(exe), "--config", str(home / "config.yaml"), "--host", "127.0.0.1",
                                     "--port", str(port), "--num_workers", "1"], env, cwd=home)
    try:
        await wait_up(f"http://127.0.0.1:{port}/health/liveliness", proc, within=180)
        target = Target("litellm", None, f"http://127.0.0.1:{port}/v1/chat/completions",
                        {"Authorization": f"Bearer {master}"}, [proc.pid], args.litellm_version)
        await measure(target, upstream, args)
    finally:
        running.stop(proc)


async def portkey(running: Running, upstream_url: str, upstream: Proc, args: argparse.Namespace) -> None:
    script = await install_portkey(args.peers_dir, args.portkey_version)
    port = free_port()
    proc = running.start("portkey", [shutil.which("node") or "node", str(script), f"--port={port}", "--headless"],
                         clean_env(NODE_ENV="production"), cwd=script.parent)
    try:
        await wait_up(f"http://127.0.0.1:{port}/", proc)
        headers = {"Authorization": "Bearer sk-client-own-key", "x-portkey-provider": "openai",
                   "x-portkey-custom-host": upstream_url}
        target = Target("portkey", None, f"http://127.0.0.1:{port}/v1/chat/completions", headers, [proc.pid],
                        args.portkey_version)
        await measure(target, upstream, args)
    finally:
        running.stop(proc)


async def run(running: Running, args: argparse.Namespace) -> int:
    port = free_port()
    args.source, args.source_version = source_tree(running, args.rev, args.source_dir)
    upstream = running.start("upstream", [PY, "-c", UPSTREAM.format(port=port)],
                             clean_env(PYTHONPATH=str(args.source)), cwd=args.source)
    await wait_up(f"http://127.0.0.1:{port}/", upstream)
    upstream_url = f"http://127.0.0.1:{port}/v1"
    failed = 0
    for gateway in args.only:
        try:
            if gateway == "direct":
                target = Target("direct", None, f"{upstream_url}/chat/completions",
                                {"Authorization": "Bearer sk-client-own-key"}, [], "fake")
                await measure(target, upstream, args)
            else:
                await {"spendgate": spendgate, "litellm": litellm, "portkey": portkey}[gateway](
                    running, upstream_url, upstream, args)
        except Skip as exc:
            failed += 1
            emit(skipped(gateway, str(exc)))
        except Exception as exc:  # one gateway's failure must not lose the others' figures
            failed += 1
            emit(skipped(gateway, f"{type(exc).__name__}: {exc}"))
        if not upstream.alive():
            emit(skipped("all", f"the fake upstream exited: {upstream.tail()}"))
            return 1
    emit(summary(MEASURED))
    return 1 if failed == len(args.only) else 0


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode/connections: each gateway's req/s and serving CPU per request (gateway + its Postgres)."""
    out: dict[str, Any] = {"bench": "peers", "summary": True, "rps": {}, "serving_cpu_ms": {}}
    for row in rows:
        key = f"{row['mode']}/{row['connections']}"
        name = row["gateway"] + (f" {row['setup']}" if row.get("setup") else "")
        out["rps"].setdefault(key, {})[name] = row["rps"]
        serving = row["gateway_cpu_ms"] + row.get("postgres_cpu_ms", 0)
        out["serving_cpu_ms"].setdefault(key, {})[name] = round(serving, 3)
    for key, rates in out["rps"].items():  # unified billing against the BYOK pass-through, same run
        if rates.get("spendgate byok") and "spendgate unified+5rules" in rates:
            out.setdefault("unified_over_byok", {})[key] = round(
                rates["spendgate unified+5rules"] / rates["spendgate byok"], 3)
        if rates.get("spendgate byok") and "spendgate unified+5rules-nodb" in rates:
            out.setdefault("unified_nodb_over_byok", {})[key] = round(
                rates["spendgate unified+5rules-nodb"] / rates["spendgate byok"], 3)
    return out


def csv(kind: type, allowed: set[str] | None = None) -> Any:
    def parse(text: str) -> list[Any]:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        if allowed is not None and (bad := [x for x in items if x not in allowed]):
            raise argparse.ArgumentTypeError(f"unknown: {', '.join(map(str, bad))} (choose from {sorted(allowed)})")
        return items
    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="timed window per mode and connection count")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up before each timed window")
    parser.add_argument("--only", type=csv(str, {"direct", "spendgate", "litellm", "portkey"}),
                        default=["direct", "spendgate", "litellm", "portkey"])
    parser.add_argument("--modes", type=csv(str, {"json", "sse"}), default=["json", "sse"])
    parser.add_argument("--connections", type=csv(int), default=[1, 32])
    parser.add_argument("--setups", type=csv(str, {"byok", "unified+5rules", "unified+5rules-nodb"}),
                        default=["byok", "unified+5rules"],
                        help="Spendgate's setups to measure (unified+5rules-nodb: the bound with no database work "
                        "for reservations, on a second process)")
    parser.add_argument("--peers-dir", type=Path, default=ROOT / "bench" / ".peers",
                        help="where the peers are installed and reused")
    parser.add_argument("--rev", help="run Spendgate and the fake upstream from this git revision (exported to the "
                        "scratch directory) instead of the working tree")
    parser.add_argument("--source", dest="source_dir", type=Path,
                        help="run Spendgate and the fake upstream from this directory (a tree like the repository's) "
                        "instead of the working tree")
    parser.add_argument("--litellm-version", default=LITELLM_VERSION)
    parser.add_argument("--portkey-version", default=PORTKEY_VERSION)
    args = parser.parse_args()
    args.peers_dir = args.peers_dir.resolve()

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds like Ctrl-C: the finally below stops everything

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    running = Running()
    code = 1
    try:
        code = asyncio.run(run(running, args))
    except KeyboardInterrupt:
        emit({"bench": "peers", "interrupted": True})
        code = 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        running.stop_all()
    sys.exit(code)


if __name__ == "__main__":
    main()
