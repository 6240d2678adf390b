"""Hostile shapes found by an adversarial review: a key that looks like an image inside free-form JSON (the
input bound skipped the whole object), a compat data URL that is not an image, Gemini modalities spelt in another
case, and answers too large to buffer whose tier and searches were read from their two end windows only. Each
test drives the gateway with the fake providers and compares what was reserved or billed with what the provider
received or reported."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.adversarial.conftest import HostileStack, log_rows
from tests.adversarial.test_money_leaks import settled_balance

PER_IN = Decimal("0.001")  # $ per input token in these gateways (output free)


def gateway_with_input_price(stack: HostileStack, models: tuple[str, ...], budget: str) -> tuple[str, str]:
    account, base = stack.new_gateway(credits_usd="1000", models=())
    with stack.admin() as admin:
        prices = [{"provider": "*", "model": m, "input_per_mtok": "1000", "output_per_mtok": "0"} for m in models]
        assert admin.put(f"/accounts/{account}/gateways/g/prices", json={"prices": prices}).status_code == 200
    stack.rule(account, name="b", budget_usd=budget, window="daily")
    return account, base


def reserved_input_tokens(answer: httpx.Response, budget: Decimal) -> Decimal:
    return (budget - Decimal(answer.headers["cf-aig-budget-remaining"])) / PER_IN


BIG = "lorem " * 30000  # 180,000 bytes of text: at least ~30,000 tokens on any tokenizer

# the prompt inside a tool call's input, beside a key that looks like an image's
SNEAKY = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [
    {"role": "user", "content": "find it"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup",
                                       "input": {"image_url": "https://example.com/p.png", "notes": BIG}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]}


@pytest.mark.parametrize("key", ["image_url", "picture"])
async def test_text_beside_an_image_url_property_in_a_tool_schema_is_reserved(hostile: HostileStack, key: str) -> None:
    _, base = gateway_with_input_price(hostile, ("gpt-4o-mini",), "1000")
    hostile.clear()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {key: {"type": "string"}, "notes": {"type": "string", "description": BIG}}}}}]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
            "tools": tools}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions", json=body)
    assert answer.status_code == 200, answer.text
    sent = hostile.recorder("openai").last.body
    assert BIG in json.dumps(sent)  # the provider got the whole schema
    reserved = reserved_input_tokens(answer, Decimal(1000))
    print(key, "reserved input tokens:", reserved, "schema bytes:", len(BIG))
    assert reserved >= len(BIG)  # the documented invariant: the bound is never below the bytes of text


async def test_text_beside_an_image_url_in_a_function_response_is_reserved(hostile: HostileStack) -> None:
    _, base = gateway_with_input_price(hostile, ("gemini-2.5-flash",), "1000")
    hostile.clear()
    body = {"contents": [
        {"role": "user", "parts": [{"text": "look up the product"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"id": "1"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {
            "image_url": "https://example.com/p.png", "description": BIG}}}]}],
        "generationConfig": {"maxOutputTokens": 10}}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/google-ai-studio/v1beta/models/gemini-2.5-flash:generateContent",
                                   json=body)
    assert answer.status_code == 200, answer.text
    assert BIG in json.dumps(hostile.recorder("google-ai-studio").last.body)
    reserved = reserved_input_tokens(answer, Decimal(1000))
    print("gemini reserved input tokens:", reserved)
    assert reserved >= len(BIG)


async def test_an_image_url_key_does_not_let_text_past_a_budget(hostile: HostileStack) -> None:
    """$20 daily budget, $0.001 per input token. A 180 KB prompt is refused, and so is the same prompt inside a tool
    call's input beside an `image_url` key (it was reserved as one image, ~6,000 tokens, and let $30 through)."""
    _, base = gateway_with_input_price(hostile, ("claude-haiku-4-5",), "20")
    hostile.clear()
    usage = {"input_tokens": 30010, "output_tokens": 5}
    plain = {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [
        {"role": "user", "content": BIG}]}
    async with httpx.AsyncClient(timeout=30) as client:
        refused = await client.post(f"{base}/anthropic/v1/messages", json=plain,
                                    headers={"x-fake-raw-usage": json.dumps(usage)})
        passed = await client.post(f"{base}/anthropic/v1/messages", json=SNEAKY,
                                   headers={"x-fake-raw-usage": json.dumps(usage)})
    print("plain:", refused.status_code, "sneaky:", passed.status_code, passed.headers.get("cf-aig-cost"),
          passed.headers.get("cf-aig-budget-remaining"))
    assert refused.status_code == 429
    assert passed.status_code == 429, "the same prompt passed the budget because its dict has an image_url key"
    assert not hostile.recorder("anthropic").requests


async def test_a_timed_out_attempt_is_billed_the_text_beside_an_image_key(hostile: HostileStack, db: Any) -> None:
    """An attempt that timed out after the provider had the prompt is billed its input bound (docs/refusals.md):
    with an `image_url` key next to the text, that bound must still cover the text (it was ~6,500 tokens)."""
    account, base = gateway_with_input_price(hostile, ("claude-haiku-4-5",), "1000")
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/anthropic/v1/messages", json=SNEAKY,
                                   headers={"cf-aig-request-timeout": "50", "x-fake-delay-ms": "400"})
    assert answer.status_code == 504
    [row] = await log_rows(db, account, 1)
    print("timed out: tokens_in billed", row["tokens_in"], "cost", row["cost_usd"], "estimated", row["usage_estimated"])
    assert row["tokens_in"] >= 30000, "billed fewer input tokens than the prompt the provider read"

@pytest.mark.parametrize("media", ["application/pdf", "video/mp4", "audio/mpeg"])
async def test_compat_refuses_a_data_url_that_is_not_an_image(hostile: HostileStack, media: str) -> None:
    """compat refuses an image_url that points at a PDF (test_compat_refuses_what_it_cannot_translate_faithfully),
    but a data: URL's media type is never checked: Gemini gets inlineData with that mimeType (billed per page /
    per second), while the estimate counted the part as one image (6,000 tokens) and skipped its bytes."""
    _, base = gateway_with_input_price(hostile, ("gemini-2.5-flash",), "1000")
    hostile.clear()
    payload = "QUJD" * 40000  # 160,000 bytes of base64
    body = {"model": "google-ai-studio/gemini-2.5-flash", "max_tokens": 10, "messages": [
        {"role": "user", "content": [{"type": "text", "text": "summarise"},
                                     {"type": "image_url", "image_url": {"url": f"data:{media};base64,{payload}"}}]}]}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/compat/chat/completions", json=body)
    print(media, answer.status_code)
    if answer.status_code == 200:
        part = hostile.recorder("google-ai-studio").last.body["contents"][0]["parts"][1]
        print("  gemini got", part["inlineData"]["mimeType"], len(part["inlineData"]["data"]), "bytes;",
              "reserved input tokens", reserved_input_tokens(answer, Decimal(1000)))
    assert answer.status_code == 400, "a non-image data: URL should be refused like a non-image https URL"

@pytest.mark.parametrize("modalities", [["IMAGE"], ["Image"], ["image"]])
async def test_gemini_image_modality_in_any_case(hostile: HostileStack, modalities: list[str]) -> None:
    """Image output is reserved at the image rate however responseModalities spells it: Gemini reads enum names in
    any case (google-genai's own examples send ["Text", "Image"] verbatim); "IMAGE" alone was recognised."""
    account, base = hostile.new_gateway(credits_usd="50", models=())
    hostile.rule(account, name="b", budget_usd="1", window="daily")
    hostile.clear()
    body = {"contents": [{"role": "user", "parts": [{"text": "a cat"}]}],
            "generationConfig": {"responseModalities": modalities, "maxOutputTokens": 10000}}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(
            f"{base}/google-ai-studio/v1beta/models/gemini-2.5-flash-image:generateContent", json=body,
            headers={"x-fake-raw-usage": json.dumps({"promptTokenCount": 3, "candidatesTokenCount": 1290,
                                                      "candidatesTokensDetails": [{"modality": "IMAGE",
                                                                                   "tokenCount": 1290}]})})
    assert answer.status_code == 200, answer.text
    reserved = Decimal(1) - Decimal(answer.headers["cf-aig-budget-remaining"])
    sent = hostile.recorder("google-ai-studio").last.body["generationConfig"]["responseModalities"]
    print(modalities, "reserved $", reserved, "sent", sent, "cost", answer.headers.get("cf-aig-cost"))
    assert reserved >= Decimal("0.3"), "10,000 image tokens at $30/M should reserve $0.30"


async def test_large_answer_a_tier_planted_in_echoed_tools_cannot_lower_the_price(hostile: HostileStack) -> None:
    """An answer over 2 MiB is priced from regex matches in its first and last 64 KiB. The Responses API echoes
    the request's `tools` (and `text.format` schema, `metadata`) as raw JSON, so a client can plant
    `"service_tier": "flex"` there; the first match in the tail wins over the provider's own `service_tier`."""
    _, base = hostile.new_gateway(credits_usd="50", models=())
    tools = [{"type": "function", "name": "f", "description": "d",
              "parameters": {"type": "object", "service_tier": "flex", "properties": {}}}]
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(f"{base}/openai/responses", json={
            "model": "gpt-5", "input": "hi", "max_output_tokens": 2000, "service_tier": "priority", "tools": tools},
            headers={"x-fake-output-bytes": str(3 * 1024 * 1024),
                     "x-fake-extra": json.dumps({"service_tier": "priority"}),
                     "x-fake-raw-usage": json.dumps({"input_tokens": 1000, "output_tokens": 1000})})
        assert answer.status_code == 200
    account = base.rstrip("/").split("/")[-2]
    spent = Decimal(50) - await settled_balance(hostile, account)
    priority = 2 * (1000 * Decimal("1.25") / 10**6 + 1000 * Decimal(10) / 10**6)
    print("billed", spent, "priority price", priority)
    assert spent == priority


async def test_large_answer_searches_past_the_end_windows_are_billed(hostile: HostileStack) -> None:
    """Searches of an answer over 2 MiB are counted only in its first and last 64 KiB; the provider's `output`
    comes before the echoed `tools`, so 64 KiB of tool schemas push every web_search_call out of the tail."""
    account, base = hostile.new_gateway(credits_usd="50", models=())
    calls = [{"type": "web_search_call", "id": f"ws_{i}", "status": "completed",
              "action": {"type": "search", "query": "q"}} for i in range(20)]
    output = [*calls, {"type": "message", "id": "msg", "status": "completed", "role": "assistant",
                       "content": [{"type": "output_text", "text": "ok", "annotations": []}]}]
    tools = [{"type": "web_search"}, {"type": "function", "name": "f", "description": "lorem " * 12000,
                                      "parameters": {"type": "object", "properties": {}}}]
    async with httpx.AsyncClient(timeout=60) as client:
        answer = await client.post(f"{base}/openai/responses", json={
            "model": "gpt-5", "input": "hi", "max_output_tokens": 2000, "tools": tools},
            headers={"x-fake-output-bytes": str(3 * 1024 * 1024), "x-fake-extra": json.dumps({"output": output}),
                     "x-fake-raw-usage": json.dumps({"input_tokens": 1000, "output_tokens": 1000})})
        assert answer.status_code == 200, answer.text[:300]
    spent = Decimal(50) - await settled_balance(hostile, account)
    expected = 1000 * Decimal("1.25") / 10**6 + 1000 * Decimal(10) / 10**6 + 20 * Decimal(10) / 1000
    print("billed", spent, "expected with 20 searches", expected)
    assert spent == expected
