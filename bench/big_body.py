"""Does one large body stall everyone else? `/healthz` latency while 7 MB JSON bodies go through the gateway.

    .venv/bin/python bench/big_body.py [--seconds 10] [--senders 2] [--mb 7]

Upstream (fake OpenAI) and gateway each run in their own process (uvicorn, one worker). `--senders` clients post
a chat completion of `--mb` MB made of many small messages (a long conversation: what JSON parsing, the
cost estimate and re-encoding spend their time on), back to back, on a pass-through key; meanwhile a prober
asks `/healthz` every 20 ms. Prints the prober's latency percentiles without the large bodies (idle) and with
them (loaded), and how many large bodies were served:
{"bench":"big_body","idle_p50_ms":..,"loaded_p50_ms":..,"loaded_p99_ms":..,"loaded_max_ms":..,"big_bodies":N}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
from _common import emit, fresh_database, percentile
from proxy import GATEWAY, UPSTREAM, create_account, free_port, spawn, wait_up


async def probe(url: str, seconds: float) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            async with session.get(url) as r:
                await r.read()
            latencies.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(0.02)
    return latencies


async def send_big(url: str, payload: bytes, seconds: float) -> int:
    served = 0
    headers = {"Authorization": "Bearer sk-bench", "content-type": "application/json"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            async with session.post(url, data=payload, headers=headers) as r:
                await r.read()
                served += r.status == 200
    return served


async def run(database_url: str, seconds: float, senders: int, mb: float) -> None:
    up_port, gw_port = free_port(), free_port()
    upstream = spawn(UPSTREAM, up_port, {})
    gateway = spawn(GATEWAY, gw_port, {"DATABASE_URL": database_url, "SPENDGATE_ADMIN_TOKEN": "bench",
                                       "SPENDGATE_UPSTREAM_OPENAI": f"http://127.0.0.1:{up_port}/v1"})
    try:
        await wait_up(f"http://127.0.0.1:{up_port}/")
        await wait_up(f"http://127.0.0.1:{gw_port}/readyz")
        account = await create_account(gw_port)
        url = f"http://127.0.0.1:{gw_port}/v1/{account}/default/openai/chat/completions"
        health = f"http://127.0.0.1:{gw_port}/healthz"
        # many small parts, as a long conversation or a large tool schema has: what costs parsing time
        part = {"role": "user", "content": [{"type": "text", "text": "lorem ipsum dolor sit amet"}]}
        count = int(mb * 1024 * 1024 / len(json.dumps(part)))
        payload = json.dumps({"model": "gpt-4o-mini", "max_tokens": 10, "messages": [part] * count}).encode()
        await send_big(url, payload, 0.1)  # warm-up
        idle = await probe(health, 3)
        loaded, *served = await asyncio.gather(probe(health, seconds),
                                               *(send_big(url, payload, seconds) for _ in range(senders)))
        emit({
            "bench": "big_body", "body_mb": round(len(payload) / 1024 / 1024, 1), "senders": senders,
            "idle_p50_ms": round(percentile(idle, 0.5), 2), "idle_p99_ms": round(percentile(idle, 0.99), 2),
            "loaded_p50_ms": round(percentile(loaded, 0.5), 2), "loaded_p99_ms": round(percentile(loaded, 0.99), 2),
            "loaded_max_ms": round(max(loaded), 2), "big_bodies": sum(served), "seconds": seconds,
        })
    finally:
        for proc in (gateway, upstream):
            proc.terminate()
            try:
                proc.wait(10)
            except Exception:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--mb", type=float, default=7)
    args = parser.parse_args()
    with fresh_database() as url:
        asyncio.run(run(url, args.seconds, args.senders, args.mb))


if __name__ == "__main__":
    main()
