"""`kill -9` of one of three instances in the middle of 50 streams (issue 6, item 4).

The killed process cannot settle anything: its reservations and credit holds stay open until their TTL
(`SPENDGATE_HOLD_TTL_SECONDS`, short here), then the survivors' sweepers expire them — pending goes back to the
buckets, the holds are voided (expired), nothing is billed for calls whose outcome nobody saw. Meanwhile the
other instances keep serving, and afterwards every ledger and limit invariant holds."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from harness.cluster import GatewayProcess, Operator, gateway_env, running
from harness.fakes import FakeServer, openai_app
from tests.eventually import eventually

pytestmark = pytest.mark.timeout(120)

ADMIN = "ops-kill-admin"
TTL_S = 4
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three four five six"}],
        "max_tokens": 100}
USAGE = {"x-fake-usage": json.dumps({"input": 6, "output": 100})}  # $0.10 a call


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeServer]:
    with FakeServer(openai_app("/v1"), graceful_timeout=1) as fake:
        yield fake


@pytest.fixture(scope="module")
def three(database_url: str, upstream: FakeServer) -> Iterator[list[GatewayProcess]]:
    env = gateway_env(database_url, ADMIN, {"openai": upstream.url + "/v1"},
                      SPENDGATE_HOLD_TTL_SECONDS=str(TTL_S), SPENDGATE_SWEEP_INTERVAL_S="0.5")
    with running([GatewayProcess(env) for _ in range(3)]) as processes:
        yield processes


async def test_kill_9_mid_stream(three: list[GatewayProcess], db: Database) -> None:
    victim, *survivors = three
    operator = Operator(survivors[0].url, ADMIN)
    account = operator.new_account(credits_usd="20")
    rule = operator.rule(account, name="daily", budget_usd="10", window="daily")
    path = f"/v1/{account}/g/openai/chat/completions"
    started = 0
    all_started = asyncio.Event()

    async def doomed(client: httpx.AsyncClient) -> str:
        nonlocal started
        try:
            async with client.stream("POST", victim.url + path, json={**BODY, "stream": True},
                                     headers={**USAGE, "x-fake-chunk-delay-ms": "300"}) as answer:
                first = True
                async for _ in answer.aiter_bytes():
                    if first:
                        first = False
                        started += 1
                        if started == 50:
                            all_started.set()
            return "finished"
        except httpx.HTTPError:
            return "cut"

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
        streams = [asyncio.create_task(doomed(client)) for _ in range(50)]
        await asyncio.wait_for(all_started.wait(), 30)
        victim.signal(signal.SIGKILL)
        outcomes = await asyncio.gather(*streams)
        assert outcomes.count("cut") == 50
        # the others keep serving, and reserve against the same budget
        served = await asyncio.gather(*(client.post(survivors[i % 2].url + path, json=BODY, headers=USAGE)
                                        for i in range(10)))
        assert [a.status_code for a in served] == [200] * 10
        assert sum(Decimal(a.headers["cf-aig-cost"]) for a in served) == Decimal("1.00")
        # the survivors settle each call once its answer has passed (the client may read it first): wait for that
        [bucket] = await eventually(lambda: operator.buckets(account, rule["id"]), blocking=True,
                                    until=lambda b: b[0]["pending_usd"] == "5.00", within=5)
        assert bucket["pending_usd"] == "5.00"  # the dead instance's 50 reservations, still held
        assert Decimal(operator.credits(account)["pending_usd"]) == Decimal("5.00")

        deadline = time.monotonic() + TTL_S + 15
        while operator.buckets(account, rule["id"])[0]["pending_usd"] != "0.00":
            assert time.monotonic() < deadline, "the survivors' sweepers did not expire the dead instance's holds"
            await asyncio.sleep(0.5)
    [bucket] = operator.buckets(account, rule["id"])
    assert bucket["spent_usd"] == "1.00"  # only what the survivors served
    credits = operator.credits(account)
    assert Decimal(credits["balance_usd"]) == Decimal("19.00") and Decimal(credits["pending_usd"]) == 0
    outcomes_in_db = await db.pool.fetch(
        "SELECT outcome, count(*) AS n FROM limits.reservations WHERE lines @> $1::jsonb GROUP BY outcome",
        [{"rule_id": rule["id"]}])
    assert {r["outcome"]: r["n"] for r in outcomes_in_db} == {"expired": 50, "settled": 10}
    await assert_all_invariants(db)
    assert victim.process is not None and victim.process.wait(5) == -signal.SIGKILL
    assert all(p.process is not None and p.process.poll() is None for p in survivors)
