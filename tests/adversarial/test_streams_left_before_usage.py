"""Streams a client leaves once it has the whole visible answer, before the event that carries the usage
(Responses: `response.completed`; Anthropic: `message_delta`): the gateway reads on to that event and bills what the
provider reports (hidden reasoning, searches), as it already did for Chat Completions. And a Responses stream that
ends in `response.failed` is billed but never cached. Found by an adversarial review; each test compares the bill
with what the fake provider reported."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx

from gateway.db import Database
from tests.adversarial.conftest import HostileStack
from tests.adversarial.test_money_leaks import M, one_row, settled_balance

# -- 1. Responses API: leave after the visible answer, before response.completed ----------------------------------

async def test_responses_client_leaving_after_the_last_item_still_pays_reasoning(
        hostile: HostileStack, db: Database) -> None:
    """As for Chat Completions (test_money_leaks: leave after finish_reason): the whole visible answer is delivered
    (output_text.done, output_item.done) and only response.completed (with usage: 20,000 reasoning tokens) is still
    to come when the client leaves; the gateway reads on and bills the provider's count."""
    account, base = hostile.new_gateway(credits_usd="50", models=())
    usage = {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 20011,
             "output_tokens_details": {"reasoning_tokens": 20000}, "total_tokens": 20021}
    got_text = ""
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{base}/openai/responses",
                                 json={"model": "gpt-4o-mini", "input": "hi", "stream": True,
                                       "max_output_tokens": 30000},
                                 headers={"x-fake-raw-usage": json.dumps(usage), "x-fake-chunk-delay-ms": "50"}) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:") and '"response.output_text.done"' in line:
                    got_text = json.loads(line[5:])["text"]
                if line.startswith("event: response.output_item.done"):
                    break  # the whole answer is here: leave before response.completed
    assert got_text.startswith("Hello from fake-openai")
    row = await one_row(db, account)
    spent = Decimal(50) - await settled_balance(hostile, account)
    print("\nRESPONSES leave-after-done:", dict(tokens_in=row["tokens_in"], tokens_out=row["tokens_out"],
          estimated=row["usage_estimated"], cost=row["cost_usd"], spent=spent))
    expected = 10 * Decimal("0.15") / M + 20011 * Decimal("0.6") / M  # gpt-4o-mini, what the provider billed
    assert row["tokens_out"] == 20011 and row["usage_estimated"] is False, \
        f"billed {row['tokens_out']} output tokens (estimated={row['usage_estimated']}), provider billed 20011"
    assert row["cost_usd"] == expected == spent


# -- 2. Anthropic: leave after the last content_block_stop, before message_delta -----------------------------------

async def test_anthropic_client_leaving_before_message_delta_still_pays_output(
        hostile: HostileStack, db: Database) -> None:
    """Anthropic's output count (Claude 4 summarized thinking is billed at the full thinking count; redacted
    thinking shows no text at all; server_tool_use searches) only comes in message_delta. A client that read every
    content block and left before it."""
    account, base = hostile.new_gateway(credits_usd="50", models=())
    usage = {"input_tokens": 10, "output_tokens": 20011, "cache_read_input_tokens": 0,
             "cache_creation_input_tokens": 0}
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{base}/anthropic/v1/messages",
                                 json={"model": "claude-haiku-4-5", "max_tokens": 30000, "stream": True,
                                       "messages": [{"role": "user", "content": "hi"}]},
                                 headers={"x-fake-raw-usage": json.dumps(usage), "x-fake-chunk-delay-ms": "50"}) as r:
            async for line in r.aiter_lines():
                if line.startswith("event: content_block_stop"):
                    break  # every block is delivered: leave before message_delta
    row = await one_row(db, account)
    spent = Decimal(50) - await settled_balance(hostile, account)
    print("\nANTHROPIC leave-before-message_delta:", dict(tokens_in=row["tokens_in"], tokens_out=row["tokens_out"],
          estimated=row["usage_estimated"], cost=row["cost_usd"], spent=spent))
    assert row["tokens_out"] == 20011, f"billed {row['tokens_out']} output tokens, provider billed 20011"


# -- 3. Cache: a streamed Responses answer that ended in response.failed is stored and replayed ---------------------

async def test_a_failed_responses_stream_is_not_cached(hostile: HostileStack, db: Database) -> None:
    """docs/api.md: never an upstream error is stored. A Responses stream is HTTP 200 whose last event may be
    response.failed (the gateway reads usage from it, so the stream counts as complete)."""
    _, base = hostile.new_gateway(credits_usd="50", models=(), cache_ttl=300)
    body = {"model": "gpt-4o-mini", "input": "summarise the quarterly report", "stream": True}
    failed = {"status": "failed", "error": {"code": "server_error", "message": "The model failed"}}
    async with httpx.AsyncClient(timeout=30) as client:
        first = await client.post(f"{base}/openai/responses", json=body, headers={
            "x-fake-end-event": "response.failed", "x-fake-extra": json.dumps(failed)})
        assert first.status_code == 200 and "event: response.failed" in first.text
        assert first.headers.get("cf-aig-cache-status") == "MISS"
        hostile.clear()
        second = await client.post(f"{base}/openai/responses", json=body)  # another client, provider healthy now
    assert second.headers.get("cf-aig-cache-status") != "HIT" and "response.failed" not in second.text, \
        "a response.failed stream was stored and replayed to the next client"


# gpt-5 with the web_search tool: 3 searches ran ($10 per 1,000) and 5,000 reasoning tokens
SEARCH_CALL = {"model": "gpt-5", "input": "hi", "stream": True, "max_output_tokens": 8000,
               "tools": [{"type": "web_search"}]}
_SEARCH_OUTPUT = [
    {"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
     "content": [{"type": "output_text", "text": "answer", "annotations": [], "logprobs": []}]},
    *({"type": "web_search_call", "id": f"ws_{i}", "status": "completed", "action": {"type": "search", "query": "q"}}
      for i in range(3))]
SEARCH_STREAM = {  # what the fake answers: those items, then the usage in response.completed
    "x-fake-raw-usage": json.dumps({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 0},
                                    "output_tokens": 5100, "output_tokens_details": {"reasoning_tokens": 5000},
                                    "total_tokens": 5200}),
    "x-fake-extra": json.dumps({"output": _SEARCH_OUTPUT})}


async def test_responses_client_leaving_after_the_last_item_still_pays_searches(
        hostile: HostileStack, db: Database) -> None:
    """gpt-5 with the web_search tool: 3 searches ran ($10 per 1,000) and 5,000 reasoning tokens; the client read
    every output item (message, then the three web_search_call items) and left before response.completed."""
    account, base = hostile.new_gateway(credits_usd="50", models=())
    seen_done = 0
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{base}/openai/responses",
                                 json=SEARCH_CALL, headers={**SEARCH_STREAM, "x-fake-chunk-delay-ms": "50"}) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("event: response.output_item.done"):
                    seen_done += 1
                    if seen_done == 4:
                        break  # every item delivered: leave before response.completed
    row = await one_row(db, account)
    spent = Decimal(50) - await settled_balance(hostile, account)
    expected = 100 * Decimal("1.25") / M + 5100 * Decimal(10) / M + 3 * Decimal(10) / 1000
    print("\nRESPONSES gpt-5 search leave:", dict(tokens_in=row["tokens_in"], tokens_out=row["tokens_out"],
          estimated=row["usage_estimated"], cost=row["cost_usd"], spent=spent, provider_billed=expected))
    assert spent == expected


async def test_the_same_search_stream_read_whole_is_billed_the_same(hostile: HostileStack) -> None:
    """Control for the test above: the same stream, read to its end, is billed what the provider billed."""
    account, base = hostile.new_gateway(credits_usd="50", models=())
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{base}/openai/responses", json=SEARCH_CALL, headers=SEARCH_STREAM)
        assert r.status_code == 200
    spent = Decimal(50) - await settled_balance(hostile, account)
    assert spent == 100 * Decimal("1.25") / M + 5100 * Decimal(10) / M + 3 * Decimal(10) / 1000
