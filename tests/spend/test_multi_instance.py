"""The burst spread over three gateway processes sharing one database: still no overspend (issue 5)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from harness.cluster import GatewayProcess, gateway_env, running
from tests.eventually import eventually_sync
from tests.spend.conftest import ADMIN, SpendStack

ROUNDS = 10


@pytest.fixture(scope="module")
def three_gateways(spend_stack: SpendStack, database_url: str) -> Iterator[list[GatewayProcess]]:
    env = gateway_env(database_url, ADMIN, {"openai": spend_stack.fakes["openai"].url + "/v1"})
    with running([GatewayProcess(env) for _ in range(3)]) as processes:
        yield processes


async def burst(urls: list[str], path: str, n: int, headers: dict[str, str]) -> list[httpx.Response]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 100}
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(*(client.post(urls[i % len(urls)] + path, json=body, headers=headers)
                                      for i in range(n)))


async def test_burst_over_three_processes_ten_times(spend_stack: SpendStack, three_gateways: list[GatewayProcess],
                                                    db: Database) -> None:
    headers = {"x-fake-usage": json.dumps({"input": 3, "output": 100})}
    for round_ in range(ROUNDS):
        account, _ = spend_stack.new_gateway(credits_usd="100")
        rule = spend_stack.rule(account, name="burst", budget_usd="4.00", window="daily")
        answers = await burst([p.url for p in three_gateways], f"/v1/{account}/g/openai/chat/completions", 300,
                              headers)
        statuses = [a.status_code for a in answers]
        assert statuses.count(200) == 40 and statuses.count(429) == 260, (round_, sorted(set(statuses)))
        served_by = {a.headers.get("x-served-port") for a in answers}  # informative only
        del served_by
        # the last settlements commit after their answers reached the client
        [bucket] = eventually_sync(lambda: spend_stack.buckets(account, rule["id"]),  # noqa: B023
                                   until=lambda b: b[0]["pending_usd"] == "0.00", what="the last settlements")
        assert (bucket["spent_usd"], bucket["pending_usd"]) == ("4.00", "0.00"), round_
        credits = spend_stack.credits(account)
        assert Decimal(credits["balance_usd"]) == Decimal("96.00") and Decimal(credits["pending_usd"]) == 0
    await assert_all_invariants(db)
    for p in three_gateways:
        assert p.process is not None and p.process.poll() is None, p.log()
