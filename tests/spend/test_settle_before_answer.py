"""A whole JSON answer is settled before its body reaches the client, so the client's very next call finds the
previous reservation settled, not pending (which near a limit would refuse it with a spurious 429 or 402)."""

from __future__ import annotations

import uuid
from decimal import Decimal

import httpx

from gateway.db import Database
from tests.spend.conftest import SpendStack


async def test_the_next_call_finds_the_previous_one_settled(spend_stack: SpendStack, db: Database) -> None:
    """Each call reserves $0.10 (100 output tokens at $0.001) and costs $0.01 (10 used). The moment an answer has
    been read, its bucket holds nothing pending and counts its cost (read from the database, not through the
    gateway). With a $0.11 budget the second call fits only because the first is settled when it arrives ($0.01
    spent + $0.10, not $0.10 pending + $0.10); on unified billing (a credit hold too) and on the client's own key."""
    for key in (None, "sk-own"):
        account, base = spend_stack.new_gateway(credits_usd="100")
        rule = spend_stack.rule(account, name="tight", budget_usd="0.11", window="daily")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(timeout=30) as client:
            for n in (1, 2):
                answer = await client.post(f"{base}/openai/chat/completions", headers={
                    **headers, "x-fake-usage": '{"input": 7, "output": 10}'}, json={
                    "model": "gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]})
                assert answer.status_code == 200, answer.text
                assert answer.headers["cf-aig-cost"] == "0.01"
                spent, pending = await db.pool.fetchrow(
                    "SELECT spent, pending FROM limits.buckets WHERE rule_id = $1", uuid.UUID(rule["id"]))
                assert (spent, pending) == (n * 10_000_000, 0)  # nano-USD
            third = await client.post(f"{base}/openai/chat/completions", headers=headers, json={
                "model": "gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]})
            assert third.status_code == 429  # $0.02 spent + $0.10 is past the budget: the rule still holds
        spend_stack.settled()
        (bucket,) = spend_stack.buckets(account, rule["id"])
        assert Decimal(bucket["spent_usd"]) == Decimal("0.02") and Decimal(bucket["pending_usd"]) == 0


def test_streams_and_refusals_still_settle_once(spend_stack: SpendStack) -> None:
    """The other answers settle when the call ends, once: a stream, and a provider's error (nothing spent)."""
    account, base = spend_stack.new_gateway(credits_usd="100")
    rule = spend_stack.rule(account, name="once", budget_usd="5", window="daily")
    body = {"model": "gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{base}/openai/chat/completions", json={**body, "stream": True},
                           headers={"x-fake-usage": '{"input": 7, "output": 10}'}) as stream:
            assert stream.status_code == 200
            stream.read()
        failed = client.post(f"{base}/openai/chat/completions", json=body, headers={"x-fake-status": "400"})
        assert failed.status_code == 400
    spend_stack.settled()
    (bucket,) = spend_stack.buckets(account, rule["id"])
    assert Decimal(bucket["spent_usd"]) == Decimal("0.01") and Decimal(bucket["pending_usd"]) == 0
