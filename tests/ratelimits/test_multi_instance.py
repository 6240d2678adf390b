"""The headline: a burst of 300 requests spread over three gateway processes sharing one database, against a rate
limit of 40 requests per minute: exactly 40 are served, and the provider receives exactly 40."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from harness.cluster import GatewayProcess, gateway_env, running
from tests.eventually import eventually
from tests.ratelimits.conftest import rate_rule_id
from tests.spend.conftest import ADMIN, SpendStack

pytestmark = pytest.mark.slow  # three gateway processes


@pytest.fixture(scope="module")
def three_gateways(spend_stack: SpendStack, database_url: str) -> Iterator[list[GatewayProcess]]:
    env = gateway_env(database_url, ADMIN, {"openai": spend_stack.fakes["openai"].url + "/v1"})
    with running([GatewayProcess(env) for _ in range(3)]) as processes:
        yield processes


async def test_a_burst_over_three_instances_is_served_exactly_at_the_limit(
        spend_stack: SpendStack, three_gateways: list[GatewayProcess], db: Database) -> None:
    # a fixed minute that will not end during the burst (the processes read the real clock)
    second = datetime.now(UTC).second
    if second > 40:
        await asyncio.sleep(61 - second)
    account = spend_stack.operator.new_account(
        credits_usd="100", rate_limits=[{"name": "burst", "limit": 40, "interval_s": 60}])
    recorder = spend_stack.recorder("openai")
    before = len(recorder.seen)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 10}
    urls = [p.url + f"/v1/{account}/g/openai/chat/completions" for p in three_gateways]
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=300)) as client:
        answers = await asyncio.gather(*(client.post(urls[i % 3], json=body) for i in range(300)))
    statuses = [a.status_code for a in answers]
    assert statuses.count(200) == 40 and statuses.count(429) == 260, sorted(set(statuses))
    assert all(a.json()["error"]["rule"] == "burst" and int(a.headers["retry-after"]) >= 1
               for a in answers if a.status_code == 429)
    assert sorted(int(a.headers["x-ratelimit-remaining"]) for a in answers if a.status_code == 200) == list(range(40))
    assert len(recorder.seen) - before == 40
    # this account's reservations (the database is shared with other tests, some of which leave theirs to the sweeper)
    rule = str(rate_rule_id(account, {"name": "burst", "limit": 40, "interval_s": 60}))
    await eventually(lambda: db.pool.fetchval(
        "SELECT count(*) FROM limits.reservations WHERE settled_at IS NULL AND lines @> $1::jsonb",
        [{"rule_id": rule}]), until=lambda n: n == 0, what="the last settlements")
    await assert_all_invariants(db)
    for p in three_gateways:
        assert p.process is not None and p.process.poll() is None, p.log()
