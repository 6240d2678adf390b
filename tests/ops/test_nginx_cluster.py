"""Run it like production: three `spendgate serve` processes behind Debian's nginx (deploy/nginx.conf, rewritten
only for loopback ports and private paths), one Postgres. The spend-limit burst goes through the load balancer
with the real OpenAI SDK and still never overspends; nginx's access log ($upstream_addr) shows that the burst was
spread over all three instances and that no request was retried on a second one; a stream passes through
unbuffered."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from harness.cluster import GatewayProcess, Operator, gateway_env, running
from harness.fakes import FakeServer, openai_app
from harness.nginx import Nginx, nginx_binary

pytestmark = [
    pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (.ci/run installs Debian's nginx-light "
                                                      "when it is missing; here apt-get failed or is unavailable)"),
    pytest.mark.timeout(60),
]

ADMIN = "ops-tests-admin"
MODEL = "gpt-4o-mini"


class Cluster(Operator):
    """The processes, the load balancer, and the admin API through the load balancer, as an operator reaches it."""

    def __init__(self, fake: FakeServer, gateways: list[GatewayProcess], lb: Nginx) -> None:
        super().__init__(lb.url, ADMIN)
        self.fake, self.gateways, self.lb = fake, gateways, lb

    def client(self, account: str, connections: int = 10) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.lb.url}/v1/{account}/g/openai", api_key="unused", max_retries=0,
            http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=connections), timeout=30))

    async def access(self, account: str, count: int, within: float = 5.0) -> list[dict[str, Any]]:
        """nginx's access-log entries of `account`'s model calls, once there are `count` of them (nginx writes an
        entry when it finalises the request, a moment after the client has the last byte)."""
        deadline = time.monotonic() + within
        while True:
            entries = [e for e in self.lb.access() if e["uri"].startswith(f"/v1/{account}/")]
            if len(entries) >= count or time.monotonic() > deadline:
                return entries
            await asyncio.sleep(0.05)

    def diagnostics(self) -> str:
        return "\n".join([self.lb.diagnostics(), *(f"--- gateway {g.port}\n{g.log()}" for g in self.gateways)])


@pytest.fixture(scope="module")
def cluster(database_url: str) -> Iterator[Cluster]:
    with FakeServer(openai_app("/v1")) as fake:
        # nginx is the trusted proxy on loopback: client addresses come from its X-Forwarded-For
        env = gateway_env(database_url, ADMIN, {"openai": fake.url + "/v1"}, SPENDGATE_TRUSTED_PROXIES="127.0.0.1")
        with running([GatewayProcess(env) for _ in range(3)], timeout=40) as gateways, \
                Nginx([f"127.0.0.1:{g.port}" for g in gateways]) as lb:
            yield Cluster(fake, gateways, lb)
            for g in gateways:
                assert g.process is not None and g.process.poll() is None, g.log()


def usage_header(output_tokens: int) -> dict[str, str]:
    return {"x-fake-usage": json.dumps({"input": 3, "output": output_tokens})}


async def test_burst_through_nginx_never_overspends(cluster: Cluster, db: Database) -> None:
    """300 concurrent calls, a $4.00 budget, $0.10 each: exactly 40 served, 260 refused, nothing pending, the
    credits debited exactly $4.00, the invariants hold; every instance took a share; none was retried."""
    account = cluster.new_account(credits_usd="100")
    rule = cluster.rule(account, name="burst", budget_usd="4.00", window="daily")
    client = cluster.client(account, connections=300)

    async def one() -> tuple[int, Any]:
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=100,
                extra_headers={**usage_header(100), "Authorization": ""})  # no client key: unified billing
            return raw.http_response.status_code, raw.http_response
        except openai.APIStatusError as exc:
            return exc.status_code, exc.response

    async with client:
        results = await asyncio.gather(*(one() for _ in range(300)))
    statuses = [s for s, _ in results]
    assert statuses.count(200) == 40 and statuses.count(429) == 260, (sorted(Counter(statuses).items()),
                                                                       cluster.diagnostics())
    refused = next(r for s, r in results if s == 429)
    assert refused.json()["error"]["message"] == "Spending limit exceeded"
    assert sum(Decimal(r.headers["cf-aig-cost"]) for s, r in results if s == 200) == Decimal("4.00")
    [bucket] = cluster.buckets(account, rule["id"])
    assert (bucket["spent_usd"], bucket["pending_usd"]) == ("4.00", "0.00")
    credits = cluster.credits(account)
    assert Decimal(credits["balance_usd"]) == Decimal("96.00") and Decimal(credits["pending_usd"]) == 0
    await assert_all_invariants(db)

    entries = await cluster.access(account, 300)
    assert len(entries) == 300, len(entries)
    # one upstream per request (nginx lists every server it tried, comma-separated): a sent call is never retried
    assert all("," not in e["upstream"] and e["upstream"] != "-" for e in entries), entries[:5]
    # every answer, the 429s included, is the gateway's own, not nginx's
    assert all(str(e["status"]) == e["upstream_status"] for e in entries)
    share = Counter(e["upstream"] for e in entries)
    served = Counter(e["upstream"] for e in entries if e["status"] == 200)
    assert set(share) == {f"127.0.0.1:{g.port}" for g in cluster.gateways}, share
    # least_conn over 300 concurrent calls: roughly a third each; a generous floor keeps this deterministic
    assert min(share.values()) >= 50, (share, served)
    assert sum(served.values()) == 40


async def test_stream_passes_through_unbuffered(cluster: Cluster) -> None:
    """The provider sends one SSE event every 150 ms; through nginx the SDK sees them arrive one by one, not in a
    lump at the end. The stream is settled: credits debited by its cost, nothing left pending."""
    account = cluster.new_account(credits_usd="10")
    headers = {**usage_header(50), "x-fake-chunk-delay-ms": "150", "Authorization": ""}
    prompt = "one two three four five six"
    arrivals: list[float] = []
    text: list[str] = []
    async with cluster.client(account) as client:
        start = time.monotonic()
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=100, stream=True,
            stream_options={"include_usage": True}, extra_headers=headers)
        async for chunk in stream:
            arrivals.append(time.monotonic() - start)
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
    assert "".join(text) == f"Hello from fake-openai: {prompt}"
    total = arrivals[-1]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert len(arrivals) >= 10 and total > 1.0, arrivals
    # the first event early, most gaps ~150 ms. (With proxy_buffering on, an output filter such as gzip holds the
    # events until the end and they arrive in one lump; with it off, nginx flushes each read from the instance.)
    assert arrivals[0] < total / 3, arrivals
    assert sum(1 for g in gaps if g > 0.05) >= len(gaps) / 2, [round(g, 3) for g in gaps]

    [entry] = await cluster.access(account, 1)
    assert entry["status"] == 200 and "," not in entry["upstream"], entry
    for _ in range(100):  # the stream settles when it closes: give the instance up to 5 s
        credits = cluster.credits(account)
        if Decimal(credits["pending_usd"]) == 0:
            break
        await asyncio.sleep(0.05)
    assert Decimal(credits["balance_usd"]) == Decimal("9.95") and Decimal(credits["pending_usd"]) == 0, credits
