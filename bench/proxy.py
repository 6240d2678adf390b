"""Proxy benchmark: a fake OpenAI upstream on loopback, the gateway in front, 64 concurrent clients.

    .venv/bin/python bench/proxy.py [--seconds 15] [--concurrency 64]

Upstream and gateway each run in their own process (uvicorn, one worker); the load comes from this process
(aiohttp). For each mode (json, sse) it calls the upstream directly, then through the gateway, and prints
{"bench":"proxy","mode":"json|sse","direct_rps":N,"gateway_rps":N,"overhead_p50_ms":x,"overhead_p99_ms":y}
where overhead = gateway latency percentile - direct latency percentile. Requests use a pass-through key, the
path of a BYOK client (no ledger writes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
from _common import emit, fresh_database, percentile

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

UPSTREAM = """
import uvicorn
from tests.fakes import openai_app
uvicorn.run(openai_app("/v1"), host="127.0.0.1", port={port}, log_level="error", access_log=False)
"""

GATEWAY = """
import uvicorn
from gateway.app import create_app
uvicorn.run(create_app(), host="127.0.0.1", port={port}, log_level="error", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(code: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY, "-c", code.format(port=port)], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_up(url: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


async def load(url: str, body: dict[str, object], stream: bool, seconds: float, concurrency: int
               ) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    payload = json.dumps({**body, "stream": stream}).encode()
    headers = {"Authorization": "Bearer sk-bench", "content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                async with session.post(url, data=payload, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                latencies.append((time.perf_counter() - start) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return len(latencies) / elapsed, latencies, errors


async def run(database_url: str, seconds: float, concurrency: int) -> None:
    up_port, gw_port = free_port(), free_port()
    upstream = spawn(UPSTREAM, up_port, {})
    gateway = spawn(GATEWAY, gw_port, {"DATABASE_URL": database_url, "SPENDGATE_ADMIN_TOKEN": "bench",
                                       "SPENDGATE_UPSTREAM_OPENAI": f"http://127.0.0.1:{up_port}/v1"})
    try:
        await wait_up(f"http://127.0.0.1:{up_port}/")
        await wait_up(f"http://127.0.0.1:{gw_port}/readyz")
        account = f"bench-{uuid.uuid4().hex[:6]}"
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer bench"}) as s:
            async with s.post(f"http://127.0.0.1:{gw_port}/admin/accounts", json={"id": account}) as r:
                assert r.status == 201, await r.text()
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        through = f"http://127.0.0.1:{gw_port}/v1/{account}/default/openai/chat/completions"
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "benchmark the proxy path"}]}
        for mode, stream in (("json", False), ("sse", True)):
            await load(through, body, stream, 1, 8)  # warm-up: connections, caches
            d_rps, d_lat, d_err = await load(direct, body, stream, seconds, concurrency)
            g_rps, g_lat, g_err = await load(through, body, stream, seconds, concurrency)
            emit({
                "bench": "proxy", "mode": mode, "direct_rps": round(d_rps, 1), "gateway_rps": round(g_rps, 1),
                "overhead_p50_ms": round(percentile(g_lat, 0.5) - percentile(d_lat, 0.5), 2),
                "overhead_p99_ms": round(percentile(g_lat, 0.99) - percentile(d_lat, 0.99), 2),
                "direct_p50_ms": round(percentile(d_lat, 0.5), 2), "gateway_p50_ms": round(percentile(g_lat, 0.5), 2),
                "errors": d_err + g_err, "concurrency": concurrency, "seconds": seconds,
            })
    finally:
        for proc in (gateway, upstream):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    with fresh_database() as url:
        asyncio.run(run(url, args.seconds, args.concurrency))


if __name__ == "__main__":
    main()
