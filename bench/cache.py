"""Response-cache benchmark: what a hit costs against a miss, and how many upstream calls concurrent identical misses
make.

    .venv/bin/python bench/cache.py [--requests 300] [--burst 50] [--delay-ms 200]

A fake OpenAI upstream (uvicorn, in this process) and two gateways (`spendgate serve`, each its own process, one
database) on loopback. One account, gateway `g` with `cache_ttl` set, BYOK (the client's own key).

1. Latency, side by side in one run: `--requests` sequential misses (each a new prompt) and as many sequential
   hits (one prompt, stored once before), alternating miss and hit, on one keep-alive connection. Per request:
   wall time at the client (p50, p99) and the gateway process's CPU (user + system, from /proc, divided by the
   requests). The fake answers at once, so a miss's time is the gateway's own work plus a loopback call.
2. Single flight: `--burst` concurrent identical requests (a new prompt, the upstream answering after
   `--delay-ms`), all to instance A, then another burst split across A and B. Prints the upstream calls the fake
   received for each (1 means single flight held) and how many answers said HIT.

One JSON line per measurement; exits non-zero when a burst made more than one upstream call.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from _common import emit, fresh_database, percentile

from harness.cluster import GatewayProcess, Operator, gateway_env, start_all
from harness.fakes import FakeServer, openai_app

ADMIN = "bench-admin"
CHAT = "/openai/chat/completions"
KEY = {"authorization": "Bearer sk-bench"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def body(prompt: str) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "max_tokens": 30, "messages": [{"role": "user", "content": prompt}]}


def latency(base: str, gateway: GatewayProcess, n: int) -> None:
    with httpx.Client(base_url=base, headers=KEY, timeout=30) as client:
        assert client.post(CHAT, json=body("the cached one")).headers["cf-aig-cache-status"] == "MISS"
        for i in range(20):  # warm up both paths
            client.post(CHAT, json=body(f"warm {i} {uuid.uuid4()}"))
            client.post(CHAT, json=body("the cached one"))
        walls: dict[str, list[float]] = {"MISS": [], "HIT": []}
        cpu: dict[str, float] = {"MISS": 0.0, "HIT": 0.0}
        for i in range(n):
            for kind, prompt in (("MISS", f"miss {i} {uuid.uuid4()}"), ("HIT", "the cached one")):
                before_cpu, started = cpu_seconds(gateway.pid), time.perf_counter()
                answer = client.post(CHAT, json=body(prompt))
                walls[kind].append((time.perf_counter() - started) * 1000)
                cpu[kind] += cpu_seconds(gateway.pid) - before_cpu
                assert answer.status_code == 200 and answer.headers["cf-aig-cache-status"] == kind, answer.text
    for kind in ("MISS", "HIT"):
        emit({"bench": "cache", "what": kind.lower(), "requests": n,
              "wall_p50_ms": round(statistics.median(walls[kind]), 2),
              "wall_p99_ms": round(percentile(walls[kind], 0.99), 2),
              "gateway_cpu_ms_per_request": round(cpu[kind] * 1000 / n, 2)})
    emit({"bench": "cache", "what": "hit/miss", "wall_p50_ratio":
          round(statistics.median(walls["HIT"]) / statistics.median(walls["MISS"]), 2),
          "cpu_ratio": round(cpu["HIT"] / cpu["MISS"], 2) if cpu["MISS"] else None})


def burst(urls: list[str], recorder: Any, delay_ms: int, label: str) -> bool:
    recorder.clear()
    payload = body(f"burst {uuid.uuid4()}")
    headers = {**KEY, "x-fake-delay-ms": str(delay_ms)}
    with ThreadPoolExecutor(len(urls)) as pool:
        answers = list(pool.map(lambda url: httpx.post(url + CHAT, json=payload, headers=headers, timeout=60),
                                urls))
    upstream = len(recorder.seen)
    hits = sum(a.headers.get("cf-aig-cache-status") == "HIT" for a in answers)
    emit({"bench": "cache", "what": "single flight", "instances": label, "concurrent": len(urls),
          "upstream_calls": upstream, "hits": hits, "ok": sum(a.status_code == 200 for a in answers)})
    return upstream == 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--delay-ms", type=int, default=200)
    args = parser.parse_args()
    app = openai_app("/v1")
    fake = FakeServer(app).start()
    try:
        with fresh_database() as url:
            env = gateway_env(url, ADMIN, {"openai": fake.url + "/v1"})
            a, b = start_all([GatewayProcess(env), GatewayProcess(env)])
            try:
                account = Operator(a.url, ADMIN).new_account(cache_ttl=3600)
                latency(f"{a.url}/v1/{account}/g", a, args.requests)
                one = burst([f"{a.url}/v1/{account}/g"] * args.burst, app.state.recorder, args.delay_ms, "A")
                two = burst([f"{gw.url}/v1/{account}/g" for gw in (a, b)] * (args.burst // 2), app.state.recorder,
                            args.delay_ms, "A+B")
            finally:
                for gateway in (a, b):
                    gateway.stop()
    finally:
        fake.stop()
    return 0 if one and two else 1


if __name__ == "__main__":
    sys.exit(main())
