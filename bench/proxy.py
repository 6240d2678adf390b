"""Proxy benchmark: a fake OpenAI upstream on loopback, the gateway in front, 64 concurrent clients.

    .venv/bin/python bench/proxy.py [--seconds 15] [--concurrency 64]
    .venv/bin/python bench/proxy.py --clients [--seconds 5] [--concurrency 32] [--rounds 2]

Upstream and gateway each run in their own process (uvicorn, one worker); the load comes from this process
(aiohttp). For each mode (json, sse) it calls the upstream directly, then through the gateway, and prints
{"bench":"proxy","mode":"json|sse","direct_rps":N,"gateway_rps":N,"overhead_p50_ms":x,"overhead_p99_ms":y}
where overhead = gateway latency percentile - direct latency percentile. Requests use a pass-through key, the
path of a BYOK client (no ledger writes).

`--clients` measures the upstream client alone, in this process, against the same fake upstream: the CPU time per
call (process time over the window / calls) and calls/s of each way the router could send a call and read its
answer whole (JSON, and SSE read to its end), rounds interleaved:

  httpx+aiohttp-transport  `client.send(client.build_request(...), stream=True)` on the gateway's client
  direct                   what the router does (gateway/providers/upstream.py `prepare`): the client's aiohttp
                           session, the answer wrapped in an httpx.Response
  aiohttp                  the session alone, no httpx.Response: the floor of the direct way
  httpx-default            httpx's own transport (httpcore), for the record

{"bench":"proxy_clients","client":"direct","mode":"json","cpu_ms_per_call":x,"calls_per_s":N,"round":1,...}
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
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from _common import emit, fresh_database, percentile

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable

UPSTREAM = """
import uvicorn
from harness.fakes import openai_app
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


async def load(url: str, body: dict[str, object], stream: bool, seconds: float, concurrency: int,
               extra: dict[str, str] | None = None) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    errors = 0
    payload = json.dumps({**body, "stream": stream}).encode()
    headers = {"Authorization": "Bearer sk-bench", "content-type": "application/json", **(extra or {})}
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


async def create_account(gw_port: int) -> str:
    """A fresh account on the gateway (admin token `bench`); its `default` gateway exists from creation."""
    account = f"bench-{uuid.uuid4().hex[:6]}"
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer bench"}) as s:
        async with s.post(f"http://127.0.0.1:{gw_port}/admin/accounts", json={"id": account}) as r:
            assert r.status == 201, await r.text()
    return account


def identity_provider() -> tuple[object, str, str]:
    """A JWKS server on loopback and one valid RS256 token for it: (server, issuer, token)."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from harness.fakes import FakeServer

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))

    async def certs(request: object) -> JSONResponse:
        return JSONResponse({"keys": [{**jwk, "kid": "k1", "alg": "RS256"}]})

    server = FakeServer(Starlette(routes=[Route("/certs", certs)])).start()
    token = jwt.encode({"iss": server.url, "aud": "bench", "sub": "bench-user", "email": "b@example.com",
                        "groups": ["bench"], "exp": int(time.time()) + 3600}, key, algorithm="RS256",
                       headers={"kid": "k1"})
    return server, server.url, token


async def run(database_url: str, seconds: float, concurrency: int, chain: bool) -> None:
    up_port, gw_port = free_port(), free_port()
    upstream = spawn(UPSTREAM, up_port, {})
    env = {"DATABASE_URL": database_url, "SPENDGATE_ADMIN_TOKEN": "bench",
           "SPENDGATE_UPSTREAM_OPENAI": f"http://127.0.0.1:{up_port}/v1"}
    idp = None
    extra: dict[str, str] = {}
    if chain:
        idp, issuer, jwt_token = identity_provider()
        env.update(SPENDGATE_JWT_ISSUER=issuer, SPENDGATE_JWKS_URL=issuer + "/certs", SPENDGATE_JWT_AUDIENCE="bench")
        extra = {"Cf-Access-Jwt-Assertion": jwt_token, "cf-aig-metadata": '{"team": "bench", "n": 1}'}
    gateway = spawn(GATEWAY, gw_port, env)
    try:
        await wait_up(f"http://127.0.0.1:{up_port}/")
        await wait_up(f"http://127.0.0.1:{gw_port}/readyz")
        account = await create_account(gw_port)
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer bench"}) as s:
            if chain:  # authentication on (a gateway token), logging on (the default), identity required
                admin = f"http://127.0.0.1:{gw_port}/admin/accounts/{account}/gateways"
                async with s.patch(f"{admin}/default", json={"authentication": True, "require_identity": True}) as r:
                    assert r.status == 200, await r.text()
                async with s.post(f"{admin}/default/tokens", json={"name": "bench"}) as r:
                    extra["cf-aig-authorization"] = "Bearer " + (await r.json())["result"]["token"]
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        through = f"http://127.0.0.1:{gw_port}/v1/{account}/default/openai/chat/completions"
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "benchmark the proxy path"}]}
        for mode, stream in (("json", False), ("sse", True)):
            await load(through, body, stream, 1, 8, extra)  # warm-up: connections, caches
            d_rps, d_lat, d_err = await load(direct, body, stream, seconds, concurrency)
            g_rps, g_lat, g_err = await load(through, body, stream, seconds, concurrency, extra)
            emit({
                "bench": "proxy", "mode": mode, "direct_rps": round(d_rps, 1), "gateway_rps": round(g_rps, 1),
                "overhead_p50_ms": round(percentile(g_lat, 0.5) - percentile(d_lat, 0.5), 2),
                "overhead_p99_ms": round(percentile(g_lat, 0.99) - percentile(d_lat, 0.99), 2),
                "direct_p50_ms": round(percentile(d_lat, 0.5), 2), "gateway_p50_ms": round(percentile(g_lat, 0.5), 2),
                "chain": "auth+jwt+metadata+logs" if chain else "router+logs", "errors": d_err + g_err,
                "concurrency": concurrency, "seconds": seconds,
            })
    finally:
        if idp is not None:
            idp.stop()  # type: ignore[attr-defined]
        for proc in (gateway, upstream):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _window(call: Callable[[bytes], Awaitable[bytes]], body: bytes, seconds: float,
                  concurrency: int) -> tuple[int, float, float]:
    """(calls made, process CPU seconds, wall seconds) of `concurrency` workers calling for `seconds`."""
    calls = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal calls
        while time.perf_counter() < deadline:
            await call(body)
            calls += 1

    cpu, began = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls, time.process_time() - cpu, time.perf_counter() - began


async def clients(seconds: float, concurrency: int, rounds: int) -> None:
    import httpx

    from gateway.providers import upstream as upstream_client
    from gateway.providers.router import make_client

    port = free_port()
    upstream = spawn(UPSTREAM, port, {})
    base = f"http://127.0.0.1:{port}/v1"
    url = f"{base}/chat/completions"
    headers = {"authorization": "Bearer sk-bench", "content-type": "application/json", "accept-encoding": "identity"}
    client = make_client()
    plain = httpx.AsyncClient(limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000), auto_decompress=False)
    try:
        await wait_up(f"http://127.0.0.1:{port}/")

        async def read(response: httpx.Response) -> bytes:
            data = bytearray()
            async for chunk in response.aiter_raw():
                data += chunk
            await response.aclose()
            return bytes(data)

        async def via_httpx(body: bytes) -> bytes:
            return await read(await client.send(client.build_request("POST", url, headers=headers, content=body),
                                                stream=True))

        async def via_direct(body: bytes) -> bytes:
            return await read(await upstream_client.prepare(client, "POST", base, url, dict(headers), body)())

        async def via_aiohttp(body: bytes) -> bytes:
            async with session.post(url, headers=headers, data=body, allow_redirects=False) as r:
                data = bytearray()
                async for chunk in r.content.iter_any():
                    data += chunk
                return bytes(data)

        async def via_httpcore(body: bytes) -> bytes:
            return await read(await plain.send(plain.build_request("POST", url, headers=headers, content=body),
                                               stream=True))

        ways = {"httpx+aiohttp-transport": via_httpx, "direct": via_direct, "aiohttp": via_aiohttp,
                "httpx-default": via_httpcore}
        for round_ in range(1, rounds + 1):
            for mode in ("json", "sse"):
                body = json.dumps({"model": "gpt-4o-mini", "stream": mode == "sse",
                                   "messages": [{"role": "user", "content": "benchmark the client"}]}).encode()
                for name, call in ways.items():
                    first = await call(body)
                    if (b"data: [DONE]" in first) != (mode == "sse") or b"chatcmpl-fake" not in first:
                        raise RuntimeError(f"{name} {mode}: not the fake's answer: {first[:200]!r}")
                    await asyncio.gather(*(call(body) for _ in range(concurrency)))  # warm: connections
                    calls, cpu, elapsed = await _window(call, body, seconds, concurrency)
                    emit({"bench": "proxy_clients", "client": name, "mode": mode, "round": round_,
                          "cpu_ms_per_call": round(cpu * 1000 / calls, 3), "calls_per_s": round(calls / elapsed, 1),
                          "calls": calls, "concurrency": concurrency, "seconds": seconds})
    finally:
        await client.aclose()
        await plain.aclose()
        await session.close()
        upstream.terminate()
        try:
            upstream.wait(10)
        except subprocess.TimeoutExpired:
            upstream.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=None, help="per window (default 15; --clients: 5)")
    parser.add_argument("--concurrency", type=int, default=None, help="clients (default 64; --clients: 32)")
    parser.add_argument("--chain", action="store_true", help="gateway token + JWT + metadata + logging on")
    parser.add_argument("--clients", action="store_true", help="the upstream client options alone (see above)")
    parser.add_argument("--rounds", type=int, default=2, help="--clients: interleaved rounds")
    args = parser.parse_args()
    if args.clients:
        asyncio.run(clients(args.seconds or 5, args.concurrency or 32, args.rounds))
        return
    with fresh_database() as url:
        asyncio.run(run(url, args.seconds or 15, args.concurrency or 64, args.chain))


if __name__ == "__main__":
    main()
