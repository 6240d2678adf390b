"""Money leaks found by a review of the canonical call and the billing of every usage shape, each now a test.

Prices here are the catalogue's (no operator override), on unified billing: the account's credits pay the gateway's
keys, so a leak is credit the account keeps while the provider billed the gateway.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.db import Database
from gateway.pricing import unit_prices
from tests.adversarial.conftest import HostileStack, log_rows

M = Decimal(1_000_000)
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}


async def settled_balance(stack: HostileStack, account: str) -> Decimal:
    for _ in range(100):
        credits = stack.credits(account)
        if Decimal(credits["pending_usd"]) == 0:
            return Decimal(credits["balance_usd"])
        await asyncio.sleep(0.1)
    raise AssertionError("a hold stayed pending")


async def one_row(db: Database, account: str) -> Any:
    [row] = await log_rows(db, account, 1)
    return row


async def test_a_client_that_leaves_after_the_answer_still_pays_its_hidden_reasoning(
        hostile: HostileStack, db: Database) -> None:
    """The client read every delta up to `finish_reason` and left before the usage chunk: the 20,000 reasoning
    tokens it never saw were billed by the provider. The gateway now reads that last chunk instead of estimating."""
    account, base = hostile.new_gateway(credits_usd="50", models=())
    usage = {"prompt_tokens": 10, "completion_tokens": 20011, "total_tokens": 20021,
             "completion_tokens_details": {"reasoning_tokens": 20000}}
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{base}/openai/chat/completions",
                                 json={"model": "gpt-4o-mini", "stream": True, **CHAT, "max_tokens": 30000},
                                 headers={"x-fake-raw-usage": json.dumps(usage), "x-fake-chunk-delay-ms": "50"}) as r:
            async for line in r.aiter_lines():
                if '"finish_reason": "stop"' in line:
                    break  # leave before the usage chunk
    row = await one_row(db, account)
    assert row["tokens_out"] == 20011 and row["usage_estimated"] is False
    expected = 10 * Decimal("0.15") / M + 20011 * Decimal("0.6") / M  # gpt-4o-mini
    assert row["cost_usd"] == expected == Decimal(50) - await settled_balance(hostile, account)


@pytest.mark.parametrize(("model", "body", "raw_usage", "expected"), [
    # Gemini image output: $30/M, not the $2.50/M of text
    ("gemini-2.5-flash-image", {"contents": [{"role": "user", "parts": [{"text": "a cat"}]}],
                                "generationConfig": {"responseModalities": ["IMAGE"], "maxOutputTokens": 2000}},
     {"promptTokenCount": 10, "candidatesTokenCount": 1290, "totalTokenCount": 1300,
      "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1290}]},
     10 * Decimal("0.3") / M + 1290 * Decimal(30) / M),
], ids=["gemini image output"])
async def test_image_output_is_billed_at_the_image_rate(hostile: HostileStack, db: Database, model: str,
                                                        body: dict[str, Any], raw_usage: dict[str, Any],
                                                        expected: Decimal) -> None:
    account, base = hostile.new_gateway(credits_usd="50", models=())
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/google-ai-studio/v1beta/models/{model}:generateContent", json=body,
                                   headers={"x-fake-raw-usage": json.dumps(raw_usage)})
    assert answer.status_code == 200, answer.text
    assert Decimal(answer.headers["cf-aig-cost"]) == expected
    assert Decimal(50) - await settled_balance(hostile, account) == expected


async def test_search_models_pay_their_search_per_call(hostile: HostileStack, db: Database) -> None:
    """Chat Completions search models search on every call and their usage never says so: $10 per 1,000."""
    _, base = hostile.new_gateway(credits_usd="50", models=())
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions", json={
            "model": "gpt-4o-mini-search-preview", "web_search_options": {}, **CHAT},
            headers={"x-fake-raw-usage": json.dumps({"prompt_tokens": 100, "completion_tokens": 100})})
    expected = 100 * Decimal("0.15") / M + 100 * Decimal("0.6") / M + Decimal(10) / 1000
    assert answer.status_code == 200 and Decimal(answer.headers["cf-aig-cost"]) == expected


async def test_anthropic_fast_mode_is_billed_at_its_price(hostile: HostileStack) -> None:
    _, base = hostile.new_gateway(credits_usd="50", models=())
    usage = {"input_tokens": 1000, "output_tokens": 1000, "speed": "fast"}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/anthropic/v1/messages", json={
            "model": "claude-opus-4-8", "max_tokens": 2000, "speed": "fast",
            "messages": [{"role": "user", "content": "hi"}]}, headers={"x-fake-raw-usage": json.dumps(usage)})
    assert answer.status_code == 200, answer.text
    assert Decimal(answer.headers["cf-aig-cost"]) == 2 * (1000 * Decimal(5) / M + 1000 * Decimal(25) / M)


async def test_timed_out_attempts_that_reached_the_provider_are_billed(hostile: HostileStack, db: Database) -> None:
    """Five attempts timed out after the provider had the prompt: each is billed its input, never $0."""
    account, base = hostile.new_gateway(credits_usd="50", models=())
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions", json={"model": "gpt-4o-mini", **CHAT},
                                   headers={"cf-aig-request-timeout": "50", "cf-aig-max-attempts": "3",
                                            "x-fake-delay-ms": "400"})
    assert answer.status_code == 504
    row = await one_row(db, account)
    assert row["usage_estimated"] is True and row["tokens_in"] > 0 and row["tokens_out"] == 0
    assert row["cost_usd"] > 0 and row["cost_usd"] == Decimal(50) - await settled_balance(hostile, account)
    single = row["tokens_in"] // 3
    assert row["tokens_in"] == 3 * single  # one input per attempt sent


async def test_a_large_answer_keeps_its_service_tier(hostile: HostileStack) -> None:
    """An answer over 2 MiB is read from its head and tail: the tier it names still prices it."""
    account, base = hostile.new_gateway(credits_usd="50", models=())
    before = await settled_balance(hostile, account)
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(f"{base}/openai/chat/completions", json={"model": "gpt-5", **CHAT}, headers={
            "x-fake-output-bytes": str(3 * 1024 * 1024), "x-fake-extra": json.dumps({"service_tier": "priority"}),
            "x-fake-raw-usage": json.dumps({"prompt_tokens": 1000, "completion_tokens": 1000})})
    assert answer.status_code == 200 and "cf-aig-cost" not in answer.headers  # too large to hold for a header
    assert before - await settled_balance(hostile, account) == 2 * (1000 * Decimal("1.25") / M + 1000 * Decimal(10) / M)


@pytest.mark.parametrize(("path", "body"), [
    ("openai/responses", {"model": "gpt-5", "input": "hi", "background": True}),
    ("openai/responses", {"model": "gpt-5", "input": "hi", "tools": [{"type": "image_generation"}]}),
    ("openai/responses", {"model": "gpt-5", "input": "hi", "tools": [{"type": "code_interpreter",
                                                                      "container": {"type": "auto"}}]}),
    ("grok/v1/responses", {"model": "grok-4", "input": "hi", "tools": [{"type": "x_search"}]}),
    ("anthropic/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [
        {"role": "user", "content": "hi"}], "tools": [{"type": "code_execution_20250522", "name": "code"}]}),
    ("google-ai-studio/v1beta/models/gemini-2.5-flash:generateContent", {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}], "tools": [{"googleMaps": {}}]}),
    ("google-ai-studio/v1beta/models/gemini-2.5-flash:generateContent?alt=proto", {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
], ids=["background", "image_generation", "code_interpreter", "x_search", "code_execution", "googleMaps",
        "alt=proto"])
async def test_what_bills_out_of_sight_never_runs_on_the_gateways_keys(hostile: HostileStack, path: str,
                                                                      body: dict[str, Any]) -> None:
    _, base = hostile.new_gateway(credits_usd="50", models=())
    hostile.clear()
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/{path}", json=body)
    assert answer.status_code == 400, answer.text
    assert hostile.seen() == []


async def test_compat_refuses_what_it_cannot_translate_faithfully(hostile: HostileStack) -> None:
    _, base = hostile.new_gateway(credits_usd="50", models=())
    hostile.clear()
    async with httpx.AsyncClient(timeout=30) as client:
        pdf = await client.post(f"{base}/compat/chat/completions", json={
            "model": "google-ai-studio/gemini-2.5-flash", "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/report.pdf"}}]}]})
        broken = [await client.post(f"{base}/compat/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": None, "tool_calls": calls}]})
            for model in ("anthropic/claude-haiku-4-5", "google-ai-studio/gemini-2.5-flash")
            for calls in (["x"], 5, [{"function": "f"}])]
    assert pdf.status_code == 400 and "image" in pdf.text
    assert [b.status_code for b in broken] == [400] * 6, [b.text for b in broken]
    assert hostile.seen() == []


async def test_gemini_batch_embeddings_are_served_and_reserved_at_the_dearest_cache_write() -> None:
    sonnet = unit_prices("anthropic", "claude-sonnet-4-5")
    assert sonnet is not None and sonnet.input >= 6 / M  # the 1-hour cache write rate, not the 5-minute one
