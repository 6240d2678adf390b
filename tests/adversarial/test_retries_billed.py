"""Retries against the reservation and the bill (found by an adversarial review): every attempt that times out
after sending is billed its input, so a request allowing N attempts reserves N inputs (it reserved one: five timed
out attempts spent ~4x a block budget), and an attempt that timed out before a later one answered is billed too (it
was not)."""
from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import httpx

from gateway.app import create_app
from gateway.db import Database
from gateway.settings import ProviderConfig, Settings
from harness.cluster import Operator
from harness.fakes import FakeServer
from harness.fakes.openai import openai_app
from tests.adversarial.conftest import ADMIN, HostileStack, log_rows

M = Decimal(1_000_000)


async def settled_balance(stack_credits, account: str) -> Decimal:
    for _ in range(100):
        credits = stack_credits(account)
        if Decimal(credits["pending_usd"]) == 0:
            return Decimal(credits["balance_usd"])
        await asyncio.sleep(0.1)
    raise AssertionError("a hold stayed pending")


async def test_a_request_allowing_five_attempts_reserves_five_inputs(hostile: HostileStack, db: Database) -> None:
    prompt = "word " * 4000  # 20,000 bytes of prompt
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
    retries = {"cf-aig-request-timeout": "50", "cf-aig-max-attempts": "5", "x-fake-delay-ms": "300"}
    # a budget one attempt's worst case fits in ($0.0031), five do not
    _, tight = hostile.new_gateway(credits_usd="50", models=())
    hostile.rule(_account_of(tight), name="tight", budget_usd="0.004", window="daily")
    # a budget five fit in: all five time out, and the bill stays inside what was reserved
    roomy_account, roomy = hostile.new_gateway(credits_usd="50", models=())
    roomy_rule = hostile.rule(roomy_account, name="roomy", budget_usd="0.02", window="daily")
    hostile.clear()
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.post(f"{tight}/openai/chat/completions", json=body, headers=retries)
        assert refused.status_code == 429 and not hostile.recorder("openai").requests
        answer = await client.post(f"{roomy}/openai/chat/completions", json=body, headers=retries)
    assert answer.status_code == 504
    assert len(hostile.recorder("openai").requests) == 5
    [row] = await log_rows(db, roomy_account, 1)
    spent = sum(Decimal(b["spent_usd"]) for b in hostile.operator.buckets(roomy_account, roomy_rule["id"]))
    assert Decimal(0) < row["cost_usd"] == spent <= Decimal("0.02")
    reserved = 5 * (row["tokens_in"] // 5) * Decimal("0.15") / M + Decimal("0.6") / M
    assert row["cost_usd"] <= reserved


def _account_of(base: str) -> str:
    return base.rstrip("/").split("/")[-2]


class FirstSlow:
    """OpenAI fake that stalls its first request (a timeout after the prompt arrived), then answers normally."""

    def __init__(self, app: Any, delay: float) -> None:
        self.app, self.delay, self.count = app, delay, 0
        self.state = app.state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            self.count += 1
            if self.count == 1:
                await asyncio.sleep(self.delay)
        await self.app(scope, receive, send)


async def test_a_timed_out_attempt_followed_by_a_success_is_billed(database_url: str, db: Database) -> None:
    """Attempt 1 times out (the provider had the prompt), attempt 2 answers: both are billed."""
    inner = openai_app("/v1")
    slow = FirstSlow(inner, 0.5)
    upstream = FakeServer(slow).start()
    settings = Settings(database_url=database_url, admin_token=ADMIN, db_pool_max=4,
                        providers={"openai": ProviderConfig("openai", upstream.url + "/v1", key="gw-key-openai")})
    gateway = FakeServer(create_app(settings, background=True), lifespan="on").start()
    try:
        operator = Operator(gateway.url, ADMIN)
        account = operator.new_account(credits_usd="50", models=())
        base = f"{gateway.url}/v1/{account}/g"
        prompt = "word " * 4000
        usage = {"prompt_tokens": 4000, "completion_tokens": 10, "total_tokens": 4010}
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.post(f"{base}/openai/chat/completions", json={
                "model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "max_tokens": 10},
                headers={"cf-aig-request-timeout": "150", "cf-aig-max-attempts": "2",
                         "x-fake-raw-usage": json.dumps(usage)})
        assert answer.status_code == 200, answer.text
        [row] = await log_rows(db, account, 1)
        one = 4000 * Decimal("0.15") / M + 10 * Decimal("0.6") / M
        assert slow.count == 2
        # the timed-out attempt had the prompt: it should add its input (estimated) on top of the answered one
        assert row["cost_usd"] > one, "the timed-out first attempt was not billed"
    finally:
        gateway.stop()
        upstream.stop()
