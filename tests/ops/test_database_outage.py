"""Postgres restarted under load (issue 6, item 4). Two `spendgate serve` processes on a private Postgres: A fails
closed (the default), B is configured `SPENDGATE_DB_UNAVAILABLE=fail_open_byok`.

While the database is down, requests fail fast with 503 and a JSON error — unified billing and blocking rules
on both, BYOK without rules on A — and B still serves BYOK without rules on its last known configuration.
Streams that were in flight finish; their settlements wait and are retried. When the database is back, both
instances serve again without a restart (same processes), nothing is left pending, the log rows written during
the outage arrive, and the ledger and limit invariants hold."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from harness.cluster import GatewayProcess, Operator, gateway_env, running
from harness.fakes import FakeServer, openai_app
from tests.ops.private_pg import PrivatePostgres

pytestmark = pytest.mark.timeout(120)

ADMIN = "ops-outage-admin"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 100}
USAGE = {"x-fake-usage": json.dumps({"input": 1, "output": 100})}  # $0.10 a request
BYOK = {"Authorization": "Bearer sk-client-own-key"}


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    try:
        yield pg
    finally:
        pg.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeServer]:
    with FakeServer(openai_app("/v1")) as fake:
        yield fake


@pytest.fixture(scope="module")
def pair(private_pg: PrivatePostgres, upstream: FakeServer) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    env = gateway_env(private_pg.url, ADMIN, {"openai": upstream.url + "/v1"})
    fail_open = {**env, "SPENDGATE_DB_UNAVAILABLE": "fail_open_byok"}
    with running([GatewayProcess(env), GatewayProcess(fail_open)]) as (a, b):
        yield a, b


@pytest.fixture
async def private_db(private_pg: PrivatePostgres) -> AsyncIterator[Database]:
    db = await Database.connect(private_pg.url, min_size=1, max_size=2)
    try:
        yield db
    finally:
        await db.close()


async def call(client: httpx.AsyncClient, url: str, account: str, headers: dict[str, str] | None = None,
               **extra: Any) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    answer = await client.post(f"{url}/v1/{account}/g/openai/chat/completions", json={**BODY, **extra},
                               headers={**USAGE, **(headers or {})})
    return answer, time.monotonic() - began


async def stream(client: httpx.AsyncClient, url: str, account: str) -> bytes:
    received = bytearray()
    async with client.stream("POST", f"{url}/v1/{account}/g/openai/chat/completions",
                             json={**BODY, "stream": True},
                             headers={**USAGE, "x-fake-chunk-delay-ms": "250"}) as answer:
        assert answer.status_code == 200
        try:
            async for chunk in answer.aiter_bytes():
                received.extend(chunk)
        except httpx.HTTPError as exc:
            raise AssertionError(f"stream broke after {bytes(received)!r}") from exc
    return bytes(received)


async def wait_until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.2)


async def test_postgres_restart_under_load(private_pg: PrivatePostgres, pair: tuple[GatewayProcess, GatewayProcess],
                                           private_db: Database) -> None:
    a, b = pair
    operator = Operator(a.url, ADMIN)
    billed = operator.new_account(credits_usd="10")  # unified billing, and a blocking rule
    rule = operator.rule(billed, name="daily", budget_usd="5", window="daily")
    free = operator.new_account()  # BYOK without any rule
    async with httpx.AsyncClient(timeout=30) as client:
        for gw in (a, b):  # warm both instances' configuration caches
            assert (await call(client, gw.url, billed))[0].status_code == 200
            assert (await call(client, gw.url, free, BYOK))[0].status_code == 200
        streams = [asyncio.create_task(stream(client, a.url, billed)) for _ in range(4)]
        await asyncio.sleep(0.6)  # reserved and streaming

        await asyncio.to_thread(private_pg.stop)
        await asyncio.sleep(0.3)
        during: dict[str, tuple[httpx.Response, float]] = {
            "A unified": await call(client, a.url, billed),
            "B unified": await call(client, b.url, billed),
            "B byok with a blocking rule": await call(client, b.url, billed, BYOK),
            "A byok without rules": await call(client, a.url, free, BYOK),
        }
        for name, (answer, took) in during.items():
            assert answer.status_code == 503, (name, answer.status_code, answer.text)
            error = answer.json()
            assert error["success"] is False and "Database unavailable" in error["error"]["message"], name
            assert answer.headers["retry-after"] and took < 2.0, (name, took)
        open_answer, _ = await call(client, b.url, free, BYOK)
        assert open_answer.status_code == 200, open_answer.text  # B fails open for BYOK without rules
        assert (await client.get(a.url + "/readyz")).status_code == 503
        received = await asyncio.gather(*streams)  # the upstream never went away: the streams finish
        assert all(r.rstrip().endswith(b"data: [DONE]") for r in received)

        await asyncio.to_thread(private_pg.start)

        async def ready() -> bool:
            return [(await client.get(gw.url + "/readyz")).status_code for gw in (a, b)] == [200, 200]

        await wait_until(ready, 20, "both instances ready again")
        answers = [(await call(client, gw.url, billed))[0].status_code for gw in (a, b)]
        assert answers == [200, 200]  # the pools recovered; no instance was restarted
        assert a.process is not None and a.process.poll() is None and b.process is not None \
            and b.process.poll() is None

        async def settled() -> bool:
            [bucket] = operator.buckets(billed, rule["id"])
            return bool(bucket["pending_usd"] == "0.00")

        await wait_until(settled, 15, "the streams' settlements, retried after the outage")
    # 2 warm-up + 4 streams + 2 after the outage, $0.10 each; nothing for the refused ones
    [bucket] = operator.buckets(billed, rule["id"])
    assert bucket["spent_usd"] == "0.80"
    credits = operator.credits(billed)
    assert Decimal(credits["balance_usd"]) == Decimal("9.20") and Decimal(credits["pending_usd"]) == 0

    async def logged() -> bool:
        rows = await private_db.pool.fetchval("SELECT count(*) FROM request_logs WHERE account_id = $1", free)
        return bool(rows == 3)  # 2 warm-up + the one B served during the outage (A's refusal had no gateway)

    await wait_until(logged, 15, "the log row of the request served during the outage")
    await assert_all_invariants(private_db)
