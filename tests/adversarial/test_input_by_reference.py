"""Input the provider loads by reference is not in the body (a stored response or conversation to continue, a stored
prompt, a file by id or URL, a document by URL, Gemini's cached content): the input bound cannot see it. Found by an
adversarial review: a $1.00 budget spent $12.50 in a burst of `previous_response_id` calls, a 5,000 tokens/hour
limit let 1,000,050 through, and $1 of credits paid for $7.50. Now such a call reserves the model's whole context
window as input, and the gateway's own keys refuse it (it would also read what is stored in the gateway's provider
account)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.pricing import context_window
from tests.adversarial.conftest import HostileStack

REFERENCES: list[tuple[str, str, dict[str, Any]]] = [
    ("openai", "responses", {"model": "gpt-4o", "previous_response_id": "resp_0123", "input": "continue",
                             "max_output_tokens": 16}),
    ("openai", "responses", {"model": "gpt-4o", "conversation": "conv_0123", "input": "go on",
                             "max_output_tokens": 16}),
    ("openai", "responses", {"model": "gpt-4o", "input": [{"type": "item_reference", "id": "msg_1"}],
                             "max_output_tokens": 16}),
    ("openai", "responses", {"model": "gpt-4o", "prompt": {"id": "pmpt_1"}, "max_output_tokens": 16}),
    ("openai", "chat/completions", {"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-abc"}}, {"type": "text", "text": "summarise"}]}]}),
    ("anthropic", "v1/messages", {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [
        {"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://e/a.pdf"}}]}]}),
    ("google-ai-studio", "v1beta/models/gemini-2.5-flash:generateContent", {"contents": [{"role": "user", "parts": [
        {"fileData": {"mimeType": "video/mp4", "fileUri": "https://e/v.mp4"}}]}],
        "generationConfig": {"maxOutputTokens": 16}}),
    ("google-ai-studio", "v1beta/models/gemini-2.5-flash:generateContent", {"cachedContent": "cachedContents/1",
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 16}}),
]


@pytest.mark.parametrize(("provider", "path", "body"), REFERENCES)
async def test_the_gateways_keys_refuse_input_by_reference(hostile: HostileStack, provider: str, path: str,
                                                            body: dict[str, Any]) -> None:
    _, base = hostile.new_gateway(credits_usd="100", models=())
    hostile.clear()
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/{provider}/{path}", json=body)
    assert answer.status_code == 400, answer.text
    assert "by reference" in answer.text
    assert not hostile.recorder(provider).requests  # nothing reached the provider
    assert Decimal(hostile.credits(_account_of(base))["balance_usd"]) == 100


def _account_of(base: str) -> str:
    return base.rstrip("/").split("/")[-2]


async def test_on_the_clients_key_a_reference_reserves_the_whole_context_window(hostile: HostileStack) -> None:
    """BYOK: served, but a $1.00 budget holds a burst: each call reserves gpt-4o's 128,000 input tokens ($0.32)."""
    window = context_window("openai", "gpt-4o")
    assert window == 128_000
    account, base = hostile.new_gateway(models=())
    rule = hostile.rule(account, name="daily", budget_usd="1.00", window="daily")
    usage = {"input_tokens": 120_000, "output_tokens": 10, "total_tokens": 120_010}  # what the provider bills
    body = {"model": "gpt-4o", "previous_response_id": "resp_0123", "input": "continue", "max_output_tokens": 16}
    headers = {"authorization": "Bearer sk-client-own", "x-fake-raw-usage": json.dumps(usage),
               "x-fake-delay-ms": "300"}
    async with httpx.AsyncClient(timeout=30) as client:
        first = await client.post(f"{base}/openai/responses", json=body, headers=headers)
        assert first.status_code == 200, first.text
        answers = await asyncio.gather(*[client.post(f"{base}/openai/responses", json=body, headers=headers)
                                         for _ in range(5)])
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 429} and statuses.count(200) <= 2, statuses
    spent = sum(Decimal(b["spent_usd"]) for b in hostile.operator.buckets(account, rule["id"]))
    assert spent <= Decimal("1.00"), f"a $1.00 budget spent ${spent} ({statuses})"


async def test_a_token_rate_limit_counts_a_file_by_id_at_the_whole_window(hostile: HostileStack) -> None:
    account, base = hostile.new_gateway(models=("gpt-4o-mini",))
    with hostile.admin() as admin:
        r = admin.patch(f"/accounts/{account}/gateways/g", json={"rate_limits": [
            {"name": "tok", "limit": 5000, "interval_s": 3600, "unit": "tokens"}]})
        assert r.status_code == 200, r.text
    hostile.clear()
    body = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": [
        {"type": "file", "file": {"file_id": "file-abc123"}}, {"type": "text", "text": "summarise"}]}]}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions", json=body,
                                   headers={"authorization": "Bearer sk-client"})
    assert answer.status_code == 429 and "Rate limit exceeded" in answer.text
    assert not hostile.recorder("openai").requests
