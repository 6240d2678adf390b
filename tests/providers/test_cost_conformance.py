"""Every documented usage shape billed exactly: one number in the log row, the `cf-aig-cost` header and the ledger.

Each case sends a call on unified billing (the gateway's key, the account's credits) to a fake provider that
answers with a usage object copied from the provider's documentation, as JSON and as a stream. The expected cost is
computed here, independently, from the provider's published prices and billing rule (`# rule:`), and the test
asserts it to the nano-dollar against the log row's `cost_usd`, the `cf-aig-cost` header (JSON answers) and the
debit of the account's credits. docs/cost-conformance.md is the table of these cases.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.db import Database
from tests.eventually import eventually
from tests.providers.conftest import Stack

M = Decimal(1_000_000)


@dataclass(frozen=True)
class Case:
    name: str
    provider: str
    path: str  # after /{provider}/
    body: dict[str, Any]
    raw_usage: dict[str, Any]  # as documented
    expected: Decimal  # computed from the published prices and rule
    extra: dict[str, Any] = field(default_factory=dict)  # other documented fields of the answer
    stream: bool = True  # the same usage through the provider's stream too


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000}
ANTHROPIC = {"model": "claude-sonnet-4-5", "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]}
GEMINI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 4000}}
# OpenAI's documented Chat Completions usage (GPT-5, low reasoning): cached and audio inside prompt_tokens,
# reasoning inside completion_tokens
GPT5_USAGE = {"prompt_tokens": 1486, "completion_tokens": 651, "total_tokens": 2137,
              "prompt_tokens_details": {"cached_tokens": 1408, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 512, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
# rule: gpt-5 $1.25/M input, $0.125/M cached input, $10/M output; flex at half, priority at twice
GPT5_STANDARD = (1486 - 1408) * Decimal("1.25") / M + 1408 * Decimal("0.125") / M + 651 * Decimal(10) / M

CASES = [
    Case("openai service tier default", "openai", "chat/completions", {"model": "gpt-5", **CHAT}, GPT5_USAGE,
         GPT5_STANDARD, {"service_tier": "default"}),
    Case("openai service tier flex", "openai", "chat/completions", {"model": "gpt-5", **CHAT}, GPT5_USAGE,
         GPT5_STANDARD / 2, {"service_tier": "flex"}),
    Case("openai service tier priority", "openai", "chat/completions", {"model": "gpt-5", **CHAT}, GPT5_USAGE,
         GPT5_STANDARD * 2, {"service_tier": "priority"}),
    # rule: gpt-audio $2.50/M text in, $32/M audio in, $10/M text out, $64/M audio out
    Case("openai audio tokens", "openai", "chat/completions", {"model": "gpt-audio", **CHAT},
         {"prompt_tokens": 1000, "completion_tokens": 2000, "total_tokens": 3000,
          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 800},
          "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 1500}},
         200 * Decimal("2.5") / M + 800 * Decimal(32) / M + 500 * Decimal(10) / M + 1500 * Decimal(64) / M),
    # rule: o4-mini $1.10/M input, $0.275/M cached, $4.40/M output (reasoning inside output_tokens)
    Case("openai responses reasoning", "openai", "responses",
         {"model": "o4-mini", "input": "hi", "max_output_tokens": 4000},
         {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 50}, "output_tokens": 300,
          "output_tokens_details": {"reasoning_tokens": 200}, "total_tokens": 400},
         50 * Decimal("1.1") / M + 50 * Decimal("0.275") / M + 300 * Decimal("4.4") / M),
    # rule: web search tool calls $10 per 1,000 (one per web_search_call output item), on top of tokens
    Case("openai responses web search calls", "openai", "responses",
         {"model": "gpt-5", "input": "hi", "max_output_tokens": 4000, "tools": [{"type": "web_search"}]},
         {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 50,
          "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 150},
         100 * Decimal("1.25") / M + 50 * Decimal(10) / M + 2 * Decimal(10) / 1000,
         {"output": [{"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
                      "content": [{"type": "output_text", "text": "Spain.", "annotations": []}]},
                     {"type": "web_search_call", "id": "ws_1", "status": "completed"},
                     {"type": "web_search_call", "id": "ws_2", "status": "completed"}]}),
    # rule: claude-sonnet-4-5 $3/M input, $0.30/M cache read, $3.75/M 5-minute write, $6/M 1-hour write, $15/M out;
    # input_tokens excludes cache reads and writes
    Case("anthropic 1-hour cache writes", "anthropic", "v1/messages", ANTHROPIC,
         {"input_tokens": 2048, "cache_read_input_tokens": 1800, "cache_creation_input_tokens": 556,
          "cache_creation": {"ephemeral_5m_input_tokens": 456, "ephemeral_1h_input_tokens": 100},
          "output_tokens": 503},
         2048 * Decimal(3) / M + 1800 * Decimal("0.3") / M + 456 * Decimal("3.75") / M + 100 * Decimal(6) / M
         + 503 * Decimal(15) / M),
    # rule: web search $10 per 1,000 requests, on top of tokens
    Case("anthropic web search requests", "anthropic", "v1/messages", ANTHROPIC,
         {"input_tokens": 10682, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
          "output_tokens": 510, "server_tool_use": {"web_search_requests": 1}},
         10682 * Decimal(3) / M + 510 * Decimal(15) / M + Decimal(10) / 1000),
    # rule: xAI reports reasoning_tokens outside completion_tokens; both are billed at grok-4's $15/M output
    # ($3/M input, $0.75/M cached)
    Case("xai reasoning outside completion tokens", "grok", "v1/chat/completions", {"model": "grok-4", **CHAT},
         {"prompt_tokens": 10120, "completion_tokens": 1499, "total_tokens": 14428,
          "prompt_tokens_details": {"text_tokens": 10120, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 128},
          "completion_tokens_details": {"reasoning_tokens": 2809, "audio_tokens": 0,
                                        "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
         (10120 - 128) * Decimal(3) / M + 128 * Decimal("0.75") / M + (1499 + 2809) * Decimal(15) / M),
    # rule: gemini-2.5-flash $0.30/M input, $2.50/M output; tool-use prompt tokens are input and thinking tokens
    # output, both on top of the prompt and candidate counts
    Case("gemini tool-use prompt tokens", "google-ai-studio", "v1beta/models/gemini-2.5-flash:generateContent",
         GEMINI, {"promptTokenCount": 151, "candidatesTokenCount": 1089, "toolUsePromptTokenCount": 18329,
                  "thoughtsTokenCount": 1120, "totalTokenCount": 20689},
         (151 + 18329) * Decimal("0.3") / M + (1089 + 1120) * Decimal("2.5") / M),
    # rule: grounding with Google Search, $35 per 1,000 grounded requests
    Case("gemini grounding", "google-ai-studio", "v1beta/models/gemini-2.5-flash:generateContent", GEMINI,
         {"promptTokenCount": 151, "candidatesTokenCount": 1089, "toolUsePromptTokenCount": 18329,
          "totalTokenCount": 19569},
         (151 + 18329) * Decimal("0.3") / M + 1089 * Decimal("2.5") / M + Decimal(35) / 1000,
         {"candidates": [{"content": {"role": "model", "parts": [{"text": "Spain won."}]}, "finishReason": "STOP",
                          "index": 0, "groundingMetadata": {"webSearchQueries": ["euro 2024 winner"]}}]}),
    # rule: gemini-2.5-flash audio input $1.00/M, text $0.30/M
    Case("gemini audio input", "google-ai-studio", "v1beta/models/gemini-2.5-flash:generateContent", GEMINI,
         {"promptTokenCount": 1000, "candidatesTokenCount": 100, "totalTokenCount": 1100,
          "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 300}, {"modality": "AUDIO", "tokenCount": 700}]},
         300 * Decimal("0.3") / M + 700 * Decimal(1) / M + 100 * Decimal("2.5") / M),
]


def stream_path(case: Case) -> str:
    return case.path.replace(":generateContent", ":streamGenerateContent") + (
        "?alt=sse" if case.provider == "google-ai-studio" else "")


async def credits(client: httpx.AsyncClient, stack: Stack, account: str) -> Decimal:
    answer = await client.get(f"{stack.gateway.url}/admin/accounts/{account}/credits",
                              headers={"Authorization": "Bearer provider-tests-admin"})
    for _ in range(50):  # settlement follows the answer by a moment
        result = answer.json()["result"]
        if Decimal(result["pending_usd"]) == 0:
            return Decimal(result["balance_usd"])
        await asyncio.sleep(0.1)
        answer = await client.get(f"{stack.gateway.url}/admin/accounts/{account}/credits",
                                  headers={"Authorization": "Bearer provider-tests-admin"})
    raise AssertionError("a hold stayed pending")


async def log_row(db: Database, log_id: str) -> Any:
    return await eventually(lambda: db.pool.fetchrow("SELECT * FROM request_logs WHERE id = $1::uuid", log_id),
                            what=f"log row {log_id}")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("streamed", [False, True], ids=["json", "sse"])
async def test_documented_usage_is_billed_exactly(stack: Stack, db: Database, case: Case, streamed: bool) -> None:
    account = stack.new_account(credits_usd="5")
    headers = {"x-fake-raw-usage": json.dumps(case.raw_usage), "x-fake-extra": json.dumps(case.extra)}
    body = {**case.body, **({"stream": True} if streamed and case.provider != "google-ai-studio" else {})}
    path = stream_path(case) if streamed else case.path
    async with httpx.AsyncClient(timeout=30) as client:
        before = await credits(client, stack, account)
        answer = await client.post(f"{stack.base(account)}/{case.provider}/{path}", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        debit = before - await credits(client, stack, account)
    row = await log_row(db, answer.headers["cf-aig-log-id"])
    assert row["billing_mode"] == "unified" and row["usage_estimated"] is False
    assert row["cost_usd"] == case.expected, (row["cost_usd"], case.expected)
    assert debit == case.expected
    if not streamed:
        assert Decimal(answer.headers["cf-aig-cost"]) == case.expected


@dataclass(frozen=True)
class Ending:
    name: str
    provider: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    estimated: bool  # the provider's final usage did not come: estimated from what was seen


# gpt-4o-mini $0.15/M input, $0.60/M output
MINI = {"model": "gpt-4o-mini", "stream": True, **CHAT}
ENDINGS = [
    Ending("responses stream ending in response.incomplete", "openai", "responses",
           {"model": "o4-mini", "input": "hi", "max_output_tokens": 16, "stream": True},
           {"x-fake-end-event": "response.incomplete",
            "x-fake-raw-usage": json.dumps({"input_tokens": 9, "output_tokens": 16, "total_tokens": 25,
                                            "output_tokens_details": {"reasoning_tokens": 0}})}, False),
    Ending("groq stream with usage only in x_groq", "groq", "chat/completions",
           {"model": "llama-3.3-70b-versatile", "stream": True, **CHAT},
           {"x-fake-groq-usage": "1", "x-fake-raw-usage": json.dumps(
               {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42})}, False),
    Ending("chat stream cut before its usage chunk", "openai", "chat/completions", MINI,
           {"x-fake-cut-after": "4"}, True),
    Ending("responses stream cut before response.completed", "openai", "responses",
           {"model": "gpt-4o-mini", "input": "a b c d e f g", "stream": True}, {"x-fake-cut-after": "6"}, True),
    Ending("anthropic stream cut before message_delta", "anthropic", "v1/messages",
           {**ANTHROPIC, "model": "claude-haiku-4-5", "stream": True,
            "messages": [{"role": "user", "content": "one two three four five six seven"}]},
           {"x-fake-cut-after": "7"}, True),
    Ending("gemini stream cut before its last chunk", "google-ai-studio",
           "v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
           {**GEMINI, "contents": [{"role": "user", "parts": [{"text": "one two three four five six seven"}]}]},
           {"x-fake-cut-after": "3"}, True),
]


@pytest.mark.parametrize("ending", ENDINGS, ids=[e.name for e in ENDINGS])
async def test_a_stream_that_ends_early_logs_what_the_ledger_debits(stack: Stack, db: Database,
                                                                    ending: Ending) -> None:
    """The log row's cost is never null while the ledger debits something: a final usage that came in another
    event shape is read; a stream cut before its usage is estimated from what was delivered (never one token for
    an answer that delivered more) and says so."""
    account = stack.new_account(credits_usd="5")
    async with httpx.AsyncClient(timeout=30) as client:
        before = await credits(client, stack, account)
        async with client.stream("POST", f"{stack.base(account)}/{ending.provider}/{ending.path}",
                                 json=ending.body, headers=ending.headers) as answer:
            assert answer.status_code == 200
            delivered = [line async for line in answer.aiter_lines()]
        debit = before - await credits(client, stack, account)
    row = await log_row(db, answer.headers["cf-aig-log-id"])
    assert row["cost_usd"] is not None and row["cost_usd"] > 0
    assert row["cost_usd"] == debit
    assert row["usage_estimated"] is ending.estimated
    if ending.estimated:  # at least one token per delivered text delta
        texts = sum(1 for line in delivered if '"text": "' in line or '"content": "' in line or '"delta": "' in line)
        assert row["tokens_out"] >= max(texts - 1, 2), (row["tokens_out"], texts)


async def test_the_operators_prices_cover_each_component(stack: Stack, db: Database) -> None:
    """An override prices 1-hour cache writes, audio and web searches too; a component it leaves out takes its
    parent's price (audio the text price), except web searches, which have no parent: without a price the call is
    unpriced, and its unified-billing cost is its reservation (the same number in the log and the ledger)."""
    account = stack.new_account(credits_usd="5")
    price = {"provider": "*", "model": "claude-sonnet-4-5", "input_per_mtok": "2", "output_per_mtok": "10",
             "cache_read_per_mtok": "0.2", "cache_write_per_mtok": "2.5", "cache_write_1h_per_mtok": "4",
             "input_audio_per_mtok": "20", "output_audio_per_mtok": "40", "web_search_per_k": "8"}
    with stack.admin() as admin:
        answer = admin.put(f"/accounts/{account}/gateways/default/prices", json={"prices": [price]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["result"][0]["web_search_per_k"] == "8"
    usage = {"input_tokens": 1000, "cache_read_input_tokens": 500, "cache_creation_input_tokens": 300,
             "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 100},
             "output_tokens": 50, "server_tool_use": {"web_search_requests": 2}}
    expected = (1000 * Decimal(2) + 500 * Decimal("0.2") + 200 * Decimal("2.5") + 100 * Decimal(4)
                + 50 * Decimal(10)) / M + 2 * Decimal(8) / 1000
    async with httpx.AsyncClient(timeout=30) as client:
        before = await credits(client, stack, account)
        answer = await client.post(f"{stack.base(account)}/anthropic/v1/messages", json=ANTHROPIC,
                                   headers={"x-fake-raw-usage": json.dumps(usage)})
        assert answer.status_code == 200
        debit = before - await credits(client, stack, account)
        assert Decimal(answer.headers["cf-aig-cost"]) == debit == expected
        row = await log_row(db, answer.headers["cf-aig-log-id"])
        assert row["usage_details"] == {"cache_write_1h_tokens": 100, "web_searches": 2}

        with stack.admin() as admin:  # no web search price: unpriced, charged its reservation
            del price["web_search_per_k"]
            answer = admin.put(f"/accounts/{account}/gateways/default/prices", json={"prices": [price]})
            assert answer.status_code == 200
        before = await credits(client, stack, account)
        answer = await client.post(f"{stack.base(account)}/anthropic/v1/messages", json=ANTHROPIC,
                                   headers={"x-fake-raw-usage": json.dumps(usage)})
        assert answer.status_code == 200 and "cf-aig-cost" not in answer.headers
        debit = before - await credits(client, stack, account)
    row = await log_row(db, answer.headers["cf-aig-log-id"])
    assert row["cost_usd"] == debit > 0


def test_what_a_request_may_spend_on_components_is_in_its_call() -> None:
    from gateway.pricing import unit_prices
    from gateway.providers.call import DEFAULT_SEARCHES, parse_call

    def call(provider: str, path: str, body: dict[str, Any]) -> Any:
        return parse_call(method="POST", provider=provider, path=path, query="", body=body, raw_body=b"",
                          default_output=100, inject_limit=False)

    searching = call("anthropic", "v1/messages", {**ANTHROPIC, "tools": [
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]})
    assert searching.web_searches == 3
    assert call("anthropic", "v1/messages", {**ANTHROPIC, "tools": [
        {"type": "web_search_20250305", "name": "web_search"}]}).web_searches == DEFAULT_SEARCHES
    assert call("google-ai-studio", "v1beta/models/gemini-2.5-flash:generateContent",
                {**GEMINI, "tools": [{"googleSearch": {}}]}).web_searches == 1
    spoken = call("openai", "chat/completions", {"model": "gpt-audio", "modalities": ["text", "audio"], **CHAT})
    assert spoken.audio_output and call("openai", "chat/completions", {"model": "gpt-5", "service_tier": "priority",
                                                                       **CHAT}).service_tier == "priority"
    # the estimate's unit prices: searches $10/1000 on Claude, audio output $64/M on gpt-audio, priority twice
    sonnet = unit_prices("anthropic", "claude-sonnet-4-5")
    assert sonnet is not None and sonnet.search == Decimal("0.01")
    audio = unit_prices("openai", "gpt-audio")
    assert audio is not None and audio.output_audio == Decimal(64) / M
    standard, priority = unit_prices("openai", "gpt-5"), unit_prices("openai", "gpt-5", tier="priority")
    assert standard is not None and priority is not None and priority.output == 2 * standard.output


@pytest.mark.parametrize(("provider", "path", "body", "refused"), [
    ("openai", "chat/completions", {"model": "gpt-4o-audio-preview", "modalities": ["text", "audio"],
                                    "audio": {"voice": "alloy", "format": "wav"}, **CHAT}, True),
    ("openai", "chat/completions", {"model": "gpt-audio", "modalities": ["text", "audio"],
                                    "audio": {"voice": "alloy", "format": "wav"}, **CHAT}, False),
    ("grok", "v1/responses", {"model": "grok-4", "input": "hi", "tools": [{"type": "web_search"}]}, True),
    ("anthropic", "v1/messages", {**ANTHROPIC, "tools": [{"type": "web_search_20250305", "name": "web_search",
                                                          "max_uses": 2}]}, False),
], ids=["audio output without a price", "audio output priced", "searches without a price", "searches priced"])
async def test_unified_billing_refuses_components_it_cannot_price(stack: Stack, provider: str, path: str,
                                                                  body: dict[str, Any], refused: bool) -> None:
    """A call that may use a component the catalogue does not price (the rule for unpriced models): 400 on the
    gateway's money before anything is sent, served on the client's own key."""
    account = stack.new_account(credits_usd="50")
    async with httpx.AsyncClient(timeout=30) as client:
        unified = await client.post(f"{stack.base(account)}/{provider}/{path}", json=body)
        own = await client.post(f"{stack.base(account)}/{provider}/{path}", json=body,
                                headers={"authorization": "Bearer sk-own", "x-api-key": "sk-own"})
    if refused:
        assert unified.status_code == 400 and "has no price for" in unified.text
    else:
        assert unified.status_code == 200, unified.text
    assert own.status_code == 200
