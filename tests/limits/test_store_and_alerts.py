from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from aiohttp import web

from gateway.db import Database
from gateway.limits.alerts import AlertDelivery
from gateway.limits.reservations import Limits, bucket_lines
from gateway.limits.rules import RuleError
from gateway.limits.store import LimitStore, TooManyRules

USD = 1_000_000_000
NOW = datetime.now(UTC)


async def new_gateway(db: Database, settings: dict[str, object] | None = None) -> tuple[str, str]:
    account = f"t{uuid.uuid4().hex[:10]}"
    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", account)
    await db.pool.execute("INSERT INTO gateways (account_id, id, settings) VALUES ($1, 'gw', $2)",
                          account, settings or {})
    return account, "gw"


SPEC = {"name": "daily", "budget_usd": "10", "window": "daily", "alert_at": [0.5]}


async def test_rules_round_trip_and_cache_invalidation(db: Database) -> None:
    account, gateway = await new_gateway(db)
    store = LimitStore(db)
    assert await store.rules(account, gateway) == []
    rule = await store.create_rule(account, gateway, SPEC)
    assert [r.id for r in await store.rules(account, gateway)] == [rule.id]
    assert await store.replace_rule(account, gateway, rule.id, {**SPEC, "budget_usd": "20"})
    assert (await store.rules(account, gateway))[0].budget_nano == 20 * USD
    assert await store.delete_rule(account, gateway, rule.id)
    assert not await store.delete_rule(account, gateway, rule.id)
    assert await store.rules(account, gateway) == []
    with pytest.raises(RuleError):
        await store.create_rule(account, gateway, {"name": "x"})


async def test_at_most_20_rules_even_when_created_concurrently(db: Database) -> None:
    account, gateway = await new_gateway(db)
    store = LimitStore(db)
    results = await asyncio.gather(*(store.create_rule(account, gateway, SPEC) for _ in range(25)),
                                   return_exceptions=True)
    assert sum(isinstance(r, TooManyRules) for r in results) == 5
    assert len(await store.rules(account, gateway)) == 20


async def test_policies_round_trip(db: Database) -> None:
    account, gateway = await new_gateway(db)
    store = LimitStore(db)
    policy = await store.create_policy(account, gateway, "interns", ("groq/*",))
    assert [p.group for p in await store.policies(account, gateway)] == ["interns"]
    assert await store.delete_policy(account, gateway, policy.id)
    assert await store.policies(account, gateway) == []


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[dict[str, object]], list[int]]]:
    received: list[dict[str, object]] = []
    failures = [0]  # answer 500 this many times first

    async def handle(request: web.Request) -> web.Response:
        if failures[0] > 0:
            failures[0] -= 1
            return web.Response(status=500)
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", received, failures
    await runner.cleanup()


async def test_alert_delivered_once_with_retries(db: Database, webhook: tuple[str, list, list[int]]) -> None:
    url, received, failures = webhook
    async with httpx.AsyncClient() as client:
        while await AlertDelivery(db, client).deliver_due():  # other tests' alerts (no webhook)
            pass
    account, gateway = await new_gateway(db, {"alert_webhook": url})
    store = LimitStore(db)
    rule = await store.create_rule(account, gateway, SPEC)
    limits = Limits(db)
    for _ in range(6):
        outcome = await limits.reserve(bucket_lines([rule], {}, NOW), USD, now=NOW)
        await limits.settle(outcome.reservation_id, USD, now=NOW)
    failures[0] = 1
    async with httpx.AsyncClient() as client:
        delivery = AlertDelivery(db, client)
        assert await delivery.deliver_due() == 0  # first attempt answered 500
        await db.pool.execute("UPDATE limits.alerts SET next_attempt_at = now() WHERE rule_id = $1",
                              uuid.UUID(rule.id))
        # two instances racing for the same due row: one delivery
        counts = await asyncio.gather(delivery.deliver_due(), AlertDelivery(db, client).deliver_due())
        assert sum(counts) == 1
        assert await delivery.deliver_due() == 0
    assert len(received) == 1
    alert = received[0]
    assert alert["rule"] == {"id": rule.id, "name": "daily"}
    assert (alert["fraction"], alert["spent_usd"], alert["limit_usd"]) == ("0.5", "5.00", "10.00")


async def test_bucket_status_shows_spent_pending_remaining(db: Database) -> None:
    from gateway.limits.store import bucket_status

    account, gateway = await new_gateway(db)
    store = LimitStore(db)
    limits = Limits(db)
    for window_type in ("fixed", "rolling"):
        spec = {**SPEC, "window_type": window_type, "scope": {"metadata.user": {"split": True}}}
        rule = await store.create_rule(account, gateway, spec)
        done = await limits.reserve(bucket_lines([rule], {"metadata.user": "a"}, NOW), 2 * USD, now=NOW)
        await limits.settle(done.reservation_id, USD, now=NOW)
        await limits.reserve(bucket_lines([rule], {"metadata.user": "a"}, NOW), 3 * USD, now=NOW)
        status = await bucket_status(db, rule, NOW)
        assert [(b["key"], b["spent_nano"], b["pending_nano"], b["remaining_nano"]) for b in status] == [
            ({"metadata.user": "a"}, USD, 3 * USD, 6 * USD)], window_type
