"""SIGTERM on a `spendgate serve` process: it stops accepting, lets in-flight streams finish up to the deadline,
settles every reservation it holds, flushes its logs, and exits (issue 6, item 3)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from harness.cluster import GatewayProcess, Operator, gateway_env
from harness.fakes import FakeServer, openai_app

pytestmark = pytest.mark.timeout(90)

ADMIN = "ops-shutdown-admin"
STREAMS = 10
# uvicorn re-raises the signal it caught once its graceful shutdown is done: the conventional "ended by SIGTERM"
CLEAN_EXIT = (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeServer]:
    with FakeServer(openai_app("/v1")) as fake:
        yield fake


def start_gateway(database_url: str, upstream: FakeServer, **extra: str) -> GatewayProcess:
    env = gateway_env(database_url, ADMIN, {"openai": upstream.url + "/v1"}, **extra)
    return GatewayProcess(env).start().wait_ready()


async def open_streams(url: str, account: str, n: int, chunk_delay_ms: int) -> tuple[list[asyncio.Task[Any]],
                                                                                       asyncio.Event]:
    """n streams of 100 output tokens each ($0.10), each signalling once its first bytes arrived."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three four five six"}],
            "max_tokens": 100, "stream": True}
    headers = {"x-fake-usage": json.dumps({"input": 6, "output": 100}),
               "x-fake-chunk-delay-ms": str(chunk_delay_ms)}
    started = 0
    all_started = asyncio.Event()
    client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=n))

    async def one() -> tuple[int, bytes]:
        nonlocal started
        received = bytearray()
        try:
            async with client.stream("POST", f"{url}/v1/{account}/g/openai/chat/completions", json=body,
                                     headers=headers) as answer:
                status = answer.status_code
                first = True
                async for chunk in answer.aiter_bytes():
                    received.extend(chunk)
                    if first:
                        first = False
                        started += 1
                        if started == n:
                            all_started.set()
        except httpx.HTTPError:
            status = -1  # the connection was closed under it
        return status, bytes(received)

    tasks = [asyncio.create_task(one()) for _ in range(n)]

    async def close_client() -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()

    asyncio.get_running_loop().create_task(close_client())
    return tasks, all_started


async def reservations_of(db: Database, rule_id: str) -> list[dict[str, Any]]:
    rows = await db.pool.fetch(
        "SELECT settled_at IS NOT NULL AS settled, outcome, actual FROM limits.reservations WHERE lines @> $1::jsonb",
        [{"rule_id": rule_id}])
    return [dict(r) for r in rows]


async def log_rows(db: Database, account: str) -> int:
    return int(await db.pool.fetchval("SELECT count(*) FROM request_logs WHERE account_id = $1", account))


async def streams_under_way(gateway: GatewayProcess, n: int, chunk_delay_ms: int
                            ) -> tuple[str, dict[str, Any], list[asyncio.Task[Any]]]:
    """A fresh account with a $5 daily rule and $10 of credits, and n of its streams, each past its first bytes."""
    operator = Operator(gateway.url, ADMIN)
    account = operator.new_account(credits_usd="10")
    rule = operator.rule(account, name="daily", budget_usd="5", window="daily")
    tasks, all_started = await open_streams(gateway.url, account, n, chunk_delay_ms=chunk_delay_ms)
    await asyncio.wait_for(all_started.wait(), 20)
    return account, rule, tasks


async def test_sigterm_lets_streams_finish_then_settles_and_flushes(database_url: str, db: Database,
                                                                     upstream: FakeServer) -> None:
    gateway = start_gateway(database_url, upstream, SPENDGATE_SHUTDOWN_TIMEOUT_S="20")
    try:
        account, rule, tasks = await streams_under_way(gateway, STREAMS, chunk_delay_ms=200)
        gateway.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            async with httpx.AsyncClient(timeout=2) as fresh:
                await fresh.get(gateway.url + "/healthz")
        results = await asyncio.gather(*tasks)
        code = await asyncio.to_thread(gateway.wait, 30)
    finally:
        gateway.stop()
    assert code in CLEAN_EXIT, gateway.log()
    for status, received in results:  # every stream ran to its end
        assert status == 200 and received.rstrip().endswith(b"data: [DONE]"), received[-200:]
    [bucket] = operator_buckets_after(database_url, account, rule["id"])
    assert (bucket["spent_usd"], bucket["pending_usd"]) == ("1.00", "0.00")
    reservations = await reservations_of(db, rule["id"])
    assert len(reservations) == STREAMS and all(r["settled"] and r["outcome"] == "settled" for r in reservations)
    balance = await db.pool.fetchrow("SELECT * FROM reporting.balances WHERE account = $1", account)
    assert balance["balance_usd"] == Decimal("9.00") and balance["pending_usd"] == 0
    assert await log_rows(db, account) == STREAMS  # no log lost
    await assert_all_invariants(db)


async def test_streams_past_the_deadline_are_cut_but_still_settled(database_url: str, db: Database,
                                                                    upstream: FakeServer) -> None:
    gateway = start_gateway(database_url, upstream, SPENDGATE_SHUTDOWN_TIMEOUT_S="1")
    try:
        account, rule, tasks = await streams_under_way(gateway, 4, chunk_delay_ms=2000)  # ~25 s each
        began = time.monotonic()
        gateway.signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks)
        code = await asyncio.to_thread(gateway.wait, 30)
        took = time.monotonic() - began
    finally:
        gateway.stop()
    assert code in CLEAN_EXIT and took < 15, (code, took, gateway.log())
    assert all(not received.rstrip().endswith(b"[DONE]") for _, received in results)  # cut at the deadline
    # settled by the process itself before it exited, not left for the sweeper: a 2xx stream that ended without
    # usage is billed what it delivered, estimated, and its log row says so with the same number
    reservations = await reservations_of(db, rule["id"])
    assert len(reservations) == 4 and all(r["settled"] and r["outcome"] == "settled" for r in reservations)
    assert await log_rows(db, account) == 4
    rows = await db.pool.fetch("SELECT cost_usd, usage_estimated FROM request_logs WHERE account_id = $1", account)
    assert all(r["usage_estimated"] and r["cost_usd"] is not None for r in rows)
    billed = sum(r["cost_usd"] for r in rows)
    assert sum(r["actual"] for r in reservations) == billed * 10**9
    [bucket] = operator_buckets_after(database_url, account, rule["id"])
    assert bucket["pending_usd"] == "0.00" and Decimal(bucket["spent_usd"]) == billed
    balance = await db.pool.fetchrow("SELECT * FROM reporting.balances WHERE account = $1", account)
    assert balance["pending_usd"] == 0 and balance["balance_usd"] == Decimal(10) - billed
    await assert_all_invariants(db)


def operator_buckets_after(database_url: str, account: str, rule_id: str) -> list[dict[str, Any]]:
    """Read buckets through a fresh instance's admin API (the one under test has exited)."""
    from gateway.app import create_app
    from gateway.settings import Settings

    app = create_app(Settings(database_url=database_url, admin_token=ADMIN, db_pool_max=2), background=False)
    with FakeServer(app, lifespan="on") as server:
        return Operator(server.url, ADMIN).buckets(account, rule_id)
