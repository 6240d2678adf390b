"""SpendLimits alone in front of a tiny ASGI app, with a planner that reads the model from a header."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from gateway.db import Database
from gateway.exchange import Exchange, Identity
from gateway.limits.plan import Plan
from gateway.limits.reservations import Limits
from gateway.limits.store import LimitStore
from gateway.middleware.spend_limits import SpendLimits
from gateway.money import to_nano
from gateway.paths import locate

USD = 1_000_000_000
# noon, days ahead of real time: nothing reserved here is ever overdue for a real-time sweeper
NOW = (datetime.now(UTC) + timedelta(days=3)).replace(hour=12, minute=0, second=0, microsecond=0)


class HeaderPlanner:
    """Model from `x-model`, estimate from `x-estimate` (USD), identity groups from `x-groups`."""

    def __init__(self) -> None:
        self.retargets: list[str] = []

    async def plan(self, scope: Scope, receive: Receive, exchange: Exchange) -> Plan | None:
        locate(scope)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        model = scope["state"].get("model") or headers.get("x-model")
        if model is None:
            return None
        if "x-groups" in headers:
            exchange.identity = Identity(user_id="u", groups=tuple(headers["x-groups"].split(",")))
        exchange.model = model
        return Plan(model.split("/")[0], model, "byok", exchange.account_id or "",
                    to_nano(Decimal(headers.get("x-estimate", "1"))), {"model": model})

    async def retarget(self, scope: Scope, exchange: Exchange, model: str) -> bool:
        self.retargets.append(model)
        scope["state"]["model"] = model
        return True

    def actual_nano(self, exchange: Exchange, plan: Plan) -> int:
        return to_nano(exchange.cost_usd) if exchange.cost_usd is not None else 0


class Upstream:
    """The inner app: answers 200 with the model it was asked for and costs `cost` USD."""

    def __init__(self, cost: str = "1", fail: bool = False) -> None:
        self.cost, self.fail, self.calls = Decimal(cost), fail, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls += 1
        exchange = Exchange.of(scope)
        if self.fail:
            raise RuntimeError("upstream blew up")
        exchange.cost_usd = self.cost
        body = json.dumps({"model": exchange.model}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


async def gateway(db: Database) -> tuple[str, LimitStore]:
    account = f"t{uuid.uuid4().hex[:10]}"
    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", account)
    await db.pool.execute("INSERT INTO gateways (account_id, id) VALUES ($1, 'gw')", account)
    return account, LimitStore(db)


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_no_rules_pass_through_without_reservation(db: Database) -> None:
    account, store = await gateway(db)
    upstream = Upstream()
    app = SpendLimits(upstream, limits=Limits(db), store=store, planner=HeaderPlanner(), clock=lambda: NOW)
    async with client(app) as c:
        r = await c.post(f"/{account}/gw/openai/chat/completions", headers={"x-model": "openai/gpt-5"})
    assert r.status_code == 200 and "cf-aig-budget-remaining" not in r.headers
    assert upstream.calls == 1


async def test_block_rule_answers_429_with_retry_after(db: Database) -> None:
    account, store = await gateway(db)
    rule = await store.create_rule(account, "gw", {"name": "daily", "budget_usd": "2", "window": "daily"})
    upstream = Upstream(cost="1")
    app = SpendLimits(upstream, limits=Limits(db), store=store, planner=HeaderPlanner(), clock=lambda: NOW)
    async with client(app) as c:
        path = f"/{account}/gw/openai/chat/completions"
        first = await c.post(path, headers={"x-model": "openai/gpt-5"})
        assert first.headers["cf-aig-budget-remaining"] == "1.00"
        second = await c.post(path, headers={"x-model": "openai/gpt-5"})
        assert second.headers["cf-aig-budget-remaining"] == "0.00"
        third = await c.post(path, headers={"x-model": "openai/gpt-5"})
    assert third.status_code == 429
    assert third.headers["retry-after"] == str(12 * 3600)
    assert third.json() == {"success": False, "error": {
        "message": "Spending limit exceeded", "rule": "daily", "rule_id": rule.id, "bucket": {},
        "spent_usd": "2.00", "pending_usd": "0.00", "reserved_usd": "1.00", "limit_usd": "2.00",
        "resets_at": (NOW.replace(hour=0) + timedelta(days=1)).isoformat()}}
    assert upstream.calls == 2


async def test_fallback_model_serves_when_budget_is_spent(db: Database) -> None:
    account, store = await gateway(db)
    await store.create_rule(account, "gw", {
        "name": "opus", "budget_usd": "1", "window": "daily", "scope": {"model": {"equals": "anthropic/opus"}},
        "action": {"fallback_model": "groq/llama"}})
    planner = HeaderPlanner()
    app = SpendLimits(Upstream(cost="1"), limits=Limits(db), store=store, planner=planner, clock=lambda: NOW)
    steps = []

    async def outer(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)
        steps.append(Exchange.of(scope).step)

    async with client(outer) as c:
        path = f"/{account}/gw/compat/chat/completions"
        assert (await c.post(path, headers={"x-model": "anthropic/opus"})).json() == {"model": "anthropic/opus"}
        r = await c.post(path, headers={"x-model": "anthropic/opus"})
    assert r.json() == {"model": "groq/llama"}
    assert planner.retargets == ["groq/llama"] and steps == [0, 1]


async def test_monitor_never_blocks(db: Database) -> None:
    account, store = await gateway(db)
    await store.create_rule(account, "gw", {"name": "m", "budget_usd": "1", "window": "daily", "action": "monitor"})
    app = SpendLimits(Upstream(cost="1"), limits=Limits(db), store=store, planner=HeaderPlanner(), clock=lambda: NOW)
    async with client(app) as c:
        codes = [(await c.post(f"/{account}/gw/openai/x", headers={"x-model": "openai/m"})).status_code
                 for _ in range(3)]
    assert codes == [200, 200, 200]


async def test_policy_denies_models_outside_the_group(db: Database) -> None:
    account, store = await gateway(db)
    await store.create_policy(account, "gw", "interns", ("groq/*",))
    upstream = Upstream()
    app = SpendLimits(upstream, limits=Limits(db), store=store, planner=HeaderPlanner(), clock=lambda: NOW)
    async with client(app) as c:
        denied = await c.post(f"/{account}/gw/openai/x", headers={"x-model": "openai/gpt-5", "x-groups": "interns"})
        ok = await c.post(f"/{account}/gw/groq/x", headers={"x-model": "groq/llama", "x-groups": "interns"})
    assert denied.status_code == 403
    assert denied.json() == {"success": False, "error": {"message": "Access denied by policy"}}
    assert ok.status_code == 200 and upstream.calls == 1


async def test_settles_when_the_inner_app_raises(db: Database) -> None:
    account, store = await gateway(db)
    await store.create_rule(account, "gw", {"name": "d", "budget_usd": "5", "window": "daily"})
    app = SpendLimits(Upstream(fail=True), limits=Limits(db), store=store, planner=HeaderPlanner(),
                      clock=lambda: NOW)
    async with client(app) as c:
        with pytest.raises(RuntimeError):
            await c.post(f"/{account}/gw/openai/x", headers={"x-model": "openai/m"})
    rules = await store.rules(account, "gw")
    open_ = await db.pool.fetchval(
        "SELECT count(*) FROM limits.reservations r, jsonb_array_elements(r.lines) l "
        "WHERE l->>'rule_id' = $1 AND settled_at IS NULL", rules[0].id)
    pending = await db.pool.fetchval("SELECT sum(pending) FROM limits.buckets WHERE rule_id = $1::uuid", rules[0].id)
    assert (open_, pending) == (0, 0)


async def test_concurrent_burst_through_the_layer_never_overspends(db: Database) -> None:
    account, store = await gateway(db)
    rule = await store.create_rule(account, "gw", {"name": "d", "budget_usd": "40", "window": "daily"})
    app = SpendLimits(Upstream(cost="1"), limits=Limits(db), store=store, planner=HeaderPlanner(), clock=lambda: NOW)
    async with client(app) as c:
        responses = await asyncio.gather(*(
            c.post(f"/{account}/gw/openai/x", headers={"x-model": "openai/m"}) for _ in range(120)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 40 and codes.count(429) == 80
    spent = await db.pool.fetchval("SELECT sum(spent) FROM limits.buckets WHERE rule_id = $1::uuid", rule.id)
    assert spent == 40 * USD
