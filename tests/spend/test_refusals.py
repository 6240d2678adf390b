"""What a refused request is told: a spend-limit rule's 429 and the account spending limit's 429 carry what is
spent, what other requests in flight hold, what this request needed and when it fits again (real gateway, fake
providers, real Postgres)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from tests.eventually import eventually
from tests.spend.conftest import Clock, SpendStack

BYOK = {"Authorization": "Bearer sk-client"}
UNIFIED: dict[str, str] = {}  # no provider key: the gateway's own, billed from the account's credits


async def chat(client: httpx.AsyncClient, base: str, max_tokens: int, headers: dict[str, str],
               delay_ms: int = 0) -> httpx.Response:
    """A chat completion whose worst case is max_tokens x $0.001, and which costs exactly that."""
    fake = {"x-fake-usage": json.dumps({"input": 5, "output": max_tokens}), "x-fake-delay-ms": str(delay_ms)}
    return await client.post(f"{base}/openai/chat/completions", headers={**fake, **headers}, json={
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens})


async def until(check: Any) -> None:
    """Wait (at most 10 s) until `check()`, a blocking call, is true."""
    await eventually(check, blocking=True)


def retry_after_matches(response: httpx.Response, now: datetime) -> None:
    resets = datetime.fromisoformat(response.json()["error"]["resets_at"])
    assert int(response.headers["retry-after"]) == int((resets - now).total_seconds())


@pytest.mark.parametrize("billing", ["byok", "unified"])
async def test_rule_refusal_names_what_others_hold_and_what_it_needed(
        spend_stack: SpendStack, clock: Clock, db: Database, billing: str) -> None:
    """Budget $1.00; one request in flight holds $0.60; a second that needs $0.50 is refused with nothing spent
    yet: the body says $0.60 pending and $0.50 reserved, so the refusal explains itself."""
    account, base = spend_stack.new_gateway(credits_usd="10")
    rule = spend_stack.rule(account, name="team", budget_usd="1.00", window="daily")
    key = BYOK if billing == "byok" else UNIFIED
    async with httpx.AsyncClient(timeout=30) as client:
        first = asyncio.create_task(chat(client, base, 600, key, delay_ms=1500))
        await until(lambda: [b["pending_usd"] for b in spend_stack.buckets(account, rule["id"])] == ["0.60"])
        refused = await chat(client, base, 500, key)
        assert (await first).status_code == 200
        await until(lambda: [b["spent_usd"] for b in spend_stack.buckets(account, rule["id"])] == ["0.60"])
        after = await chat(client, base, 500, key)  # $0.60 spent now: still no room for $0.50
    assert refused.status_code == 429
    midnight = clock.now.replace(hour=0) + timedelta(days=1)
    assert refused.json() == {"success": False, "error": {
        "message": "Spending limit exceeded", "rule": "team", "rule_id": rule["id"], "bucket": {},
        "spent_usd": "0.00", "pending_usd": "0.60", "reserved_usd": "0.50", "limit_usd": "1.00",
        "resets_at": midnight.isoformat()}}
    assert refused.headers["retry-after"] == str(12 * 3600)
    assert after.status_code == 429
    assert {k: after.json()["error"][k] for k in ("spent_usd", "pending_usd", "reserved_usd")} == {
        "spent_usd": "0.60", "pending_usd": "0.00", "reserved_usd": "0.50"}
    await assert_all_invariants(db)


@pytest.mark.parametrize("strategy", ["fixed", "rolling"])
async def test_account_spending_limit_is_a_429_that_explains_itself(
        spend_stack: SpendStack, clock: Clock, db: Database, strategy: str) -> None:
    """Account limit $0.10 a day: $0.03 spent, $0.04 held by a request in flight, and one that needs $0.05 is
    refused - 429 with the amounts and when it fits again; 402 stays for credit that does not cover it."""
    account, base = spend_stack.new_gateway(credits_usd="10")
    with spend_stack.admin() as admin:
        put = admin.put(f"/accounts/{account}/billing/spending-limit",
                        json={"amount_usd": "0.10", "duration": "daily", "strategy": strategy})
        assert put.status_code == 200, put.text
    async with httpx.AsyncClient(timeout=30) as client:
        assert (await chat(client, base, 30, UNIFIED)).status_code == 200
        clock.advance(minutes=20)
        held = asyncio.create_task(chat(client, base, 40, UNIFIED, delay_ms=1500))
        await until(lambda: spend_stack.credits(account)["pending_usd"] == "0.04")
        refused = await chat(client, base, 50, UNIFIED)
        assert (await held).status_code == 200
        await until(lambda: spend_stack.credits(account)["pending_usd"] == "0.00")
        fits = await chat(client, base, 30, UNIFIED)  # 0.03 + 0.04 + 0.03: exactly the limit
    assert refused.status_code == 429
    if strategy == "fixed":
        resets = clock.now.replace(hour=0, minute=0) + timedelta(days=1)  # the next calendar day
    else:
        resets = clock.now.replace(minute=0) + timedelta(hours=1, days=1)  # the noon slice leaves the last 24 h
    assert refused.json() == {"success": False, "error": {
        "message": "Account spending limit exceeded", "duration": "daily", "strategy": strategy,
        "spent_usd": "0.03", "pending_usd": "0.04", "reserved_usd": "0.05", "limit_usd": "0.10",
        "resets_at": resets.isoformat()}}
    retry_after_matches(refused, clock.now)
    assert fits.status_code == 200

    def limit() -> dict[str, Any]:
        with spend_stack.admin() as admin:
            return admin.get(f"/accounts/{account}/billing/spending-limit").json()["result"]  # type: ignore[no-any-return]

    # the answer reaches the client before its settlement is committed: wait for it
    await until(lambda: limit()["spent_usd"] == "0.10")
    assert limit()["remaining_usd"] == "0.00"
    await assert_all_invariants(db)


async def test_not_enough_credit_stays_402(spend_stack: SpendStack, db: Database) -> None:
    _, base = spend_stack.new_gateway(credits_usd="0.04")
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await chat(client, base, 50, UNIFIED)
    assert refused.status_code == 402 and "retry-after" not in refused.headers
    assert refused.json() == {"success": False, "error": {
        "message": "Insufficient credit for this request's worst-case cost", "reason": "insufficient_credit",
        "available_usd": "0.04", "reserved_usd": "0.05"}}
    await assert_all_invariants(db)
