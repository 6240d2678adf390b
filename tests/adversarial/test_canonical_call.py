"""One canonical call, forwarded exactly as understood: what a hostile client crafts, and what the provider got.

Each test states an attack that worked before the gateway parsed every request into one call; the fakes record
everything that reaches them, so "nothing was forwarded" and "the provider got the reserved limit" are checked
on what the provider actually received.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from decimal import Decimal
from typing import Any

import brotli
import httpx
import pytest
import zstandard

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from tests.adversarial.conftest import GATEWAY_KEYS, MAX_BODY, PER_TOKEN, HostileStack, log_rows

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def reserved_tokens(answer: httpx.Response, budget: Decimal) -> Decimal:
    """What the gateway reserved, in output tokens, read off `cf-aig-budget-remaining` (inputs are free here)."""
    return (budget - Decimal(answer.headers["cf-aig-budget-remaining"])) / PER_TOKEN


# -- the body is read once ----------------------------------------------------------------------------------------


async def test_a_body_just_over_the_limit_is_413_for_every_reader(hostile: HostileStack, db: Database) -> None:
    """Before: the planner's read gave up at the limit, the router read on and found the rest, a valid JSON body
    (leading whitespace is JSON), and served a $1 call on the gateway's key against $0.01 and a block rule."""
    account, base = hostile.new_gateway(credits_usd="0.01")
    hostile.rule(account, name="tiny", budget_usd="0.0001", window="daily")
    hostile.clear()
    tail = json.dumps({**CHAT, "max_tokens": 1000}).encode()

    async def pieces() -> Any:
        for _ in range(MAX_BODY // 16384 + 2):
            yield b" " * 16384
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        yield tail

    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions", content=pieces(),
                                   headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert hostile.seen() == []
    assert hostile.credits(account)["balance_usd"] == "0.01"
    [row] = await log_rows(db, account, 1)
    assert row["status_code"] == 413


# -- paths --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tail", [
    "chat/completions%3Fx=/embeddings",  # priced as embeddings, served as a chat completion
    "chat/completions%3fx=/embeddings",
    "chat/completions%23/embeddings",
    "chat%2Fcompletions",
    "chat/completions%5C..%5Cembeddings",
    "chat/completions%00",
    "chat/completions%0dX-Evil:%201",
    "chat/completions%252F",
    "%2e%2e/%2e%2e/admin/accounts",
    "./chat/completions",
    "embeddings/../chat/completions",
    "../../../admin/accounts",
    "chat//completions",
    "chat/completions\\",
])
async def test_paths_another_parser_could_read_differently_are_400(hostile: HostileStack, db: Database,
                                                                   tail: str) -> None:
    account, _ = hostile.new_gateway(credits_usd="5")
    hostile.clear()
    status, body = await hostile.raw("POST", f"/v1/{account}/g/openai/{tail}", {"content-type": "application/json"},
                                     json.dumps({**CHAT, "max_tokens": 100_000}).encode())
    assert status == 400, body
    assert json.loads(body)["success"] is False
    assert hostile.seen() == []
    assert hostile.credits(account)["balance_usd"] == "5.00"
    [row] = await log_rows(db, account, 1)
    assert row["status_code"] == 400


async def test_a_newline_in_the_path_is_400_json(hostile: HostileStack) -> None:
    """No route matches a path with a newline: answered 400 JSON before routing (not logged: nothing routed it)."""
    account, _ = hostile.new_gateway(credits_usd="5")
    hostile.clear()
    status, body = await hostile.raw("POST", f"/v1/{account}/g/openai/chat/completions%0d%0aX-Evil:%201",
                                     {"content-type": "application/json"}, json.dumps(CHAT).encode())
    assert status == 400 and json.loads(body)["success"] is False
    assert hostile.seen() == []


async def test_a_gemini_model_blocked_by_rule_and_policy_cannot_hide_behind_dot_segments(
        hostile: HostileStack, db: Database) -> None:
    """Before: the gateway read the first model in the path (allowed, cheap); the provider resolved `..` and ran
    the blocked one, billed at the cheap model's price."""
    account, _ = hostile.new_gateway(credits_usd="5")
    hostile.rule(account, name="no-pro", budget_usd="0.000001", window="daily",
                 scope={"model": {"equals": "google-ai-studio/gemini-2.5-pro"}})
    hostile.clear()
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                       "generationConfig": {"maxOutputTokens": 10}}).encode()
    sneaky = (f"/v1/{account}/g/google-ai-studio/v1beta/models/gemini-2.0-flash-lite:generateContent"
              "/../../models/gemini-2.5-pro:generateContent")
    status, _ = await hostile.raw("POST", sneaky, {"content-type": "application/json"}, body)
    assert status == 400
    blocked = f"/v1/{account}/g/google-ai-studio/v1beta/models/gemini-2.5-pro:generateContent"
    status, _ = await hostile.raw("POST", blocked, {"content-type": "application/json"}, body)
    assert status == 429
    assert hostile.seen() == []
    await log_rows(db, account, 2)


# -- the output limit ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider,field", [("anthropic", "max_tokens"),
                                            ("google-ai-studio", "generationConfig.maxOutputTokens"),
                                            ("groq", "max_tokens"), ("openai", "max_tokens")])
async def test_compat_sends_the_limit_it_reserved(hostile: HostileStack, provider: str, field: str) -> None:
    """Before: the estimate skipped a null `max_completion_tokens` and reserved `max_tokens: 10`; the translation
    read the null and sent 4096 (Anthropic) or no limit at all (Gemini)."""
    model = {"anthropic": "claude-haiku-4-5", "google-ai-studio": "gemini-2.5-flash",
             "groq": "llama-3.3-70b-versatile", "openai": "gpt-4o-mini"}[provider]
    account, base = hostile.new_gateway(credits_usd="5")
    hostile.rule(account, name="b", budget_usd="1", window="daily")
    hostile.clear()
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/compat/chat/completions", json={
            "model": f"{provider}/{model}", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 10, "max_completion_tokens": None})
    assert answer.status_code == 200, answer.text
    assert reserved_tokens(answer, Decimal(1)) == 10
    got = hostile.recorder(provider).last.body
    for part in field.split("."):
        got = got[part]
    assert got == 10
    sent = hostile.recorder(provider).last.body
    assert "max_completion_tokens" not in sent  # one field, one number: nothing a provider could read otherwise


async def test_native_aliases_collapse_to_the_reserved_number(hostile: HostileStack) -> None:
    account, base = hostile.new_gateway(credits_usd="50")
    hostile.rule(account, name="b", budget_usd="10", window="daily")
    hostile.clear()
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions",
                                   json={**CHAT, "max_tokens": 10, "max_completion_tokens": None, "n": 2})
        assert answer.status_code == 200, answer.text
        assert reserved_tokens(answer, Decimal(10)) == 20  # 10 per choice, two choices
        sent = hostile.recorder("openai").last.body
        assert sent["max_tokens"] == 10 and "max_completion_tokens" not in sent and sent["n"] == 2
        disagree = await client.post(f"{base}/openai/chat/completions",
                                     json={**CHAT, "max_tokens": 10, "max_completion_tokens": 100_000})
        assert disagree.status_code == 400 and "disagree" in disagree.json()["error"]["message"]
        anthropic = await client.post(f"{base}/anthropic/v1/messages", json={
            "model": "claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]})
        assert anthropic.status_code == 200, anthropic.text
        # no max_tokens: the gateway reserved its default and the provider got exactly that
        assert hostile.recorder("anthropic").last.body["max_tokens"] == 4096
        fresh, fresh_base = hostile.new_gateway(credits_usd="5")
        hostile.rule(fresh, name="b", budget_usd="1", window="daily")
        snake = await client.post(
            f"{fresh_base}/google-ai-studio/v1beta/models/gemini-2.5-flash:generateContent",
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                  "generation_config": {"max_output_tokens": 7, "candidate_count": 2}})
        assert snake.status_code == 200, snake.text
        assert reserved_tokens(snake, Decimal(1)) == 14
        assert hostile.recorder("google-ai-studio").last.body["generation_config"]["max_output_tokens"] == 7
        both = await client.post(
            f"{base}/google-ai-studio/v1beta/models/gemini-2.5-flash:generateContent",
            json={"contents": [], "generation_config": {"max_output_tokens": 7},
                  "generationConfig": {"maxOutputTokens": 100_000}})
        assert both.status_code == 400


@pytest.mark.parametrize("field,value", [
    ("max_tokens", "10"), ("max_tokens", 10.5), ("max_tokens", True), ("max_tokens", 0), ("max_tokens", -1),
    ("max_tokens", 1e15), ("max_tokens", 10**15), ("max_completion_tokens", [10]), ("n", 10**17), ("n", 0),
    ("n", "2"), ("stream", "yes"),
])
async def test_limit_fields_of_the_wrong_type_or_range_are_400_naming_them(hostile: HostileStack, field: str,
                                                                           value: Any) -> None:
    """Before: `max_tokens: 1e15` overflowed nano-USD (a 500); strings and floats were read as "no limit"."""
    _, base = hostile.new_gateway(credits_usd="5")
    hostile.clear()
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions", json={**CHAT, field: value})
        compat = await client.post(f"{base}/compat/chat/completions",
                                   json={**CHAT, "model": "anthropic/claude-haiku-4-5", field: value})
    for response in (answer, compat):
        assert response.status_code == 400, response.text
        assert field in json.dumps(response.json())
    assert hostile.seen() == []


async def test_inject_max_tokens_writes_the_reserved_default(hostile: HostileStack) -> None:
    account, base = hostile.new_gateway(credits_usd="5", inject_max_tokens=True, default_max_output_tokens=300)
    hostile.rule(account, name="b", budget_usd="1", window="daily")
    hostile.clear()
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions", json=CHAT)
        gemini = await client.post(f"{base}/compat/chat/completions",
                                   json={**CHAT, "model": "google-ai-studio/gemini-2.5-flash"})
    assert reserved_tokens(answer, Decimal(1)) == 300
    assert hostile.recorder("openai").last.body["max_completion_tokens"] == 300
    assert gemini.status_code == 200
    assert hostile.recorder("google-ai-studio").last.body["generationConfig"]["maxOutputTokens"] == 300


# -- encodings ----------------------------------------------------------------------------------------------------


ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
async def test_encoded_bodies_are_decoded_before_any_rule_reads_them(hostile: HostileStack, encoding: str) -> None:
    """Before: a gzip body was unreadable to the gateway, so no rule matched; the provider decoded it."""
    account, base = hostile.new_gateway(credits_usd="5")
    hostile.rule(account, name="gpt4o", budget_usd="0.05", window="daily", scope={"model": {"equals": "openai/gpt-4o"}})
    hostile.clear()
    headers = {"content-type": "application/json", "content-encoding": encoding}
    async with httpx.AsyncClient(timeout=30) as client:
        blocked = await client.post(f"{base}/openai/chat/completions", headers=headers, content=ENCODERS[encoding](
            json.dumps({**CHAT, "model": "gpt-4o", "max_tokens": 1000}).encode()))
        served = await client.post(f"{base}/openai/chat/completions", headers=headers, content=ENCODERS[encoding](
            json.dumps({**CHAT, "max_tokens": 5}).encode()))
    assert blocked.status_code == 429
    assert served.status_code == 200, served.text
    got = hostile.recorder("openai").last
    assert got.body["max_tokens"] == 5 and "content-encoding" not in got.headers  # decoded, as understood


async def test_encodings_the_gateway_cannot_decode_or_that_explode_are_refused(hostile: HostileStack) -> None:
    _, base = hostile.new_gateway(credits_usd="5")
    hostile.clear()
    body = json.dumps(CHAT).encode()
    bomb = gzip.compress(b" " * (64 * MAX_BODY))  # a few kB that decode far past the size limit
    async with httpx.AsyncClient(timeout=30) as client:
        unknown = await client.post(f"{base}/openai/chat/completions", content=body,
                                    headers={"content-encoding": "compress"})
        exploded = await client.post(f"{base}/openai/chat/completions", content=bomb,
                                     headers={"content-encoding": "gzip"})
        broken = await client.post(f"{base}/openai/chat/completions", content=b"\x1f\x8bnot gzip",
                                   headers={"content-encoding": "gzip"})
    assert len(bomb) < MAX_BODY
    assert (unknown.status_code, exploded.status_code, broken.status_code) == (415, 413, 400)
    assert hostile.seen() == []


async def test_bodies_that_are_not_faithful_json_are_400(hostile: HostileStack) -> None:
    _, base = hostile.new_gateway(credits_usd="5")
    hostile.clear()
    bodies = [
        b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": NaN}',
        b'{"model": "gpt-4o-mini", "messages": [], "temperature": Infinity}',
        b'{"model": "gpt-4o-mini", "messages": [], "temperature": 1e400}',
        b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 70 + b"]" * 70 + b"}",
        b'{"model": "gpt-4o-mini\\r\\nx-evil: 1", "messages": []}',
        b'{"model": "gpt-4o-mini\\u0000", "messages": []}',
        b'{"model": 5, "messages": []}',
        b'["not", "an", "object"]',
        b"not json",
    ]
    async with httpx.AsyncClient(timeout=30) as client:
        for body in bodies:
            answer = await client.post(f"{base}/openai/chat/completions", content=body,
                                       headers={"content-type": "application/json"})
            assert answer.status_code == 400, (body[:80], answer.text)
    assert hostile.seen() == []


async def test_duplicate_keys_reach_the_provider_as_the_gateway_read_them(hostile: HostileStack) -> None:
    """JSON parsers disagree on duplicate keys (first wins, last wins): the provider gets the gateway's reading."""
    account, base = hostile.new_gateway(credits_usd="5")
    hostile.rule(account, name="b", budget_usd="1", window="daily")
    hostile.clear()
    raw = b'{"model": "gpt-4o-mini", "messages": [], "max_tokens": 100000, "max_tokens": 10}'
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions", content=raw,
                                   headers={"content-type": "application/json"})
    assert answer.status_code == 200
    assert reserved_tokens(answer, Decimal(1)) == 10
    assert hostile.recorder("openai").last.raw.count(b"max_tokens") == 1
    assert hostile.recorder("openai").last.body["max_tokens"] == 10


@pytest.mark.parametrize("name", ["authorization", "cf-aig-byok-alias", "cf-aig-custom-cost", "content-encoding",
                                  "cf-aig-metadata"])
async def test_a_header_sent_twice_is_refused(hostile: HostileStack, name: str) -> None:
    """One layer could read the first value and another the last (the key, the metadata a rule splits on)."""
    _, base = hostile.new_gateway(credits_usd="5", allow_custom_cost=True)
    hostile.clear()
    values = {"authorization": ("Bearer sk-client", "Bearer sk-other"), "cf-aig-byok-alias": ("default", "x"),
              "cf-aig-custom-cost": ('{"per_token_in": 1, "per_token_out": 1}', '{"per_token_in": 0}'),
              "content-encoding": ("identity", "gzip"), "cf-aig-metadata": ('{"team": "a"}', '{"team": "b"}')}[name]
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions", content=json.dumps(CHAT).encode(),
                                   headers=[("content-type", "application/json"), (name, values[0]),
                                            (name, values[1])])
    assert answer.status_code == 400 and name in answer.text
    assert hostile.seen() == []


# -- the gateway's keys -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method,tail", [
    ("POST", "openai/files"), ("GET", "openai/chat/completions"), ("POST", "openai/fine_tuning/jobs"),
    ("DELETE", "openai/models/gpt-4o-mini"), ("POST", "openai/audio/speech"), ("GET", "openai/models"),
    ("POST", "anthropic/v1/messages/batches"), ("POST", "anthropic/v1/files"),
    ("POST", "google-ai-studio/v1beta/models/gemini-2.5-flash:batchGenerateContent"),
    ("POST", "google-ai-studio/v1beta/cachedContents"), ("POST", "grok/v1/images/generations"),
])
async def test_the_gateways_keys_only_reach_endpoints_it_prices(hostile: HostileStack, method: str,
                                                                tail: str) -> None:
    account, base = hostile.new_gateway(credits_usd="5")
    with hostile.admin() as admin:  # a stored key (BYOK alias) is the gateway's key too
        for provider in ("openai", "anthropic", "google-ai-studio", "grok"):
            assert admin.post(f"/accounts/{account}/gateways/g/provider-keys",
                              json={"provider": provider, "alias": "stored", "key": "sk-stored-key"}).status_code == 201
    hostile.clear()
    async with httpx.AsyncClient(timeout=30) as client:
        unified = await client.request(method, f"{base}/{tail}", json=CHAT)
        stored = await client.request(method, f"{base}/{tail}", json=CHAT, headers={"cf-aig-byok-alias": "stored"})
        own = await client.request(method, f"{base}/{tail}", json=CHAT,
                                   headers={"authorization": "Bearer sk-client", "x-api-key": "sk-client",
                                            "x-goog-api-key": "sk-client"})
    assert unified.status_code == 403 and tail.split("/", 1)[1].split(":")[0] in unified.text
    assert stored.status_code == 403
    for seen in hostile.seen():  # only the client's own key went anywhere
        keys = {seen.headers.get(h, "").removeprefix("Bearer ") for h in ("authorization", "x-api-key",
                                                                           "x-goog-api-key")}
        assert not keys & (GATEWAY_KEYS | {"sk-stored-key"})
    assert own.status_code < 500  # the client's own key passes to whatever the provider answers
    assert len(hostile.seen()) == 1


async def test_account_moving_headers_are_dropped_on_the_gateways_keys(hostile: HostileStack) -> None:
    _, base = hostile.new_gateway(credits_usd="5")
    hostile.clear()
    moving = {"openai-organization": "org-victim", "openai-project": "proj-victim"}
    async with httpx.AsyncClient(timeout=30) as client:
        unified = await client.post(f"{base}/openai/chat/completions", json=CHAT, headers=moving)
        own = await client.post(f"{base}/openai/chat/completions", json=CHAT,
                                headers={**moving, "authorization": "Bearer sk-client"})
        query = await client.post(f"{base}/openai/chat/completions?api-version=1", json=CHAT)
        beta = await client.post(f"{base}/anthropic/v1/messages?beta=true", json={
            "model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
    assert unified.status_code == own.status_code == 200
    first, second = hostile.recorder("openai").requests
    assert "openai-organization" not in first.headers and "openai-project" not in first.headers
    assert second.headers["openai-organization"] == "org-victim"  # the client's own account: its choice
    assert query.status_code == 400 and "api-version" in query.text
    assert beta.status_code == 200 and hostile.recorder("anthropic").last.query == "beta=true"


async def test_hop_by_hop_and_forwarding_headers_stop_at_the_gateway(hostile: HostileStack) -> None:
    _, base = hostile.new_gateway(credits_usd="5")
    hostile.clear()
    hop = {"connection": "keep-alive, x-private-hop", "x-private-hop": "secret", "proxy-authorization": "Basic eA==",
           "proxy-custom": "1", "forwarded": "for=10.0.0.1", "x-real-ip": "10.0.0.1", "x-forwarded-for": "10.0.0.1",
           "te": "trailers", "x-kept": "yes"}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions", json=CHAT, headers=hop)
    assert answer.status_code == 200
    received = hostile.recorder("openai").last.headers
    assert received["x-kept"] == "yes"  # an end-to-end header passes
    for name in ("x-private-hop", "proxy-authorization", "proxy-custom", "forwarded", "x-real-ip", "x-forwarded-for",
                 "te"):
        assert name not in received, name
    assert "x-private-hop" not in received.get("connection", "")


async def test_a_client_never_prices_the_gateways_money(hostile: HostileStack) -> None:
    account, base = hostile.new_gateway(credits_usd="5", allow_custom_cost=True)
    hostile.clear()
    zero = {"cf-aig-custom-cost": json.dumps({"per_token_in": 0, "per_token_out": 0})}
    async with httpx.AsyncClient(timeout=30) as client:
        unified = await client.post(f"{base}/openai/chat/completions", json=CHAT, headers=zero)
        byok = await client.post(f"{base}/openai/chat/completions", json=CHAT,
                                 headers={**zero, "authorization": "Bearer sk-client"})
        huge = await client.post(f"{base}/openai/chat/completions", json=CHAT, headers={
            "authorization": "Bearer sk-client",
            "cf-aig-custom-cost": json.dumps({"per_token_in": 1e30, "per_token_out": 1})})
    assert unified.status_code == 400 and "custom-cost" in unified.text
    assert byok.status_code == 200 and byok.headers["cf-aig-cost"] == "0"
    assert huge.status_code == 400 and huge.json()["error"]["header"] == "cf-aig-custom-cost"
    assert len(hostile.recorder("openai").requests) == 1
    assert hostile.credits(account)["balance_usd"] == "5.00"


# -- clients that leave -------------------------------------------------------------------------------------------


async def test_a_client_that_leaves_before_the_first_byte_pays_for_the_prompt(hostile: HostileStack,
                                                                              db: Database) -> None:
    """Before: the call was cancelled and billed $0 although the provider had the prompt."""
    account, base = hostile.new_gateway(credits_usd="5", models=("priced-elsewhere",))  # genai-prices' own
    prompt = "word " * 2000
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=0.5)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{base}/openai/chat/completions", headers={"x-fake-delay-ms": "3000"},
                              json={**CHAT, "model": "gpt-4o", "max_tokens": 10,
                                    "messages": [{"role": "user", "content": prompt}]})
    [row] = await log_rows(db, account, 1)
    assert row["status_code"] == 499 and row["usage_estimated"] is True
    assert row["tokens_in"] >= len(prompt) and row["tokens_out"] == 0 and row["cost_usd"] > 0
    for _ in range(50):
        credits = hostile.credits(account)
        if Decimal(credits["pending_usd"]) == 0:
            break
        await asyncio.sleep(0.1)
    assert Decimal(credits["balance_usd"]) == Decimal(5) - row["cost_usd"]
    await assert_all_invariants(db)


async def test_a_streaming_client_that_leaves_stops_the_upstream_and_pays_what_was_delivered(
        hostile: HostileStack, db: Database) -> None:
    account, base = hostile.new_gateway(credits_usd="5")
    payload = {**CHAT, "stream": True, "max_tokens": 1000,
               "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(40))}]}
    headers = {"x-fake-chunk-delay-ms": "200", "x-fake-usage": json.dumps({"input": 7, "output": 1000})}
    texts = 0
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{base}/openai/chat/completions", json=payload, headers=headers) as r:
            async for line in r.aiter_lines():
                texts += '"content": "' in line
                if texts == 3:
                    break
    [row] = await log_rows(db, account, 1)
    assert row["usage_estimated"] is True and row["status_code"] == 200
    assert 3 <= row["tokens_out"] < 9  # what was delivered, not the 1000 the provider would have reported
    assert row["duration_ms"] < 2000  # the upstream was not read to its end (13 events x 200 ms)
    assert row["cost_usd"] == row["tokens_out"] * PER_TOKEN


async def test_one_log_row_per_refused_request(hostile: HostileStack, db: Database) -> None:
    account, base = hostile.new_gateway(credits_usd="5")
    async with httpx.AsyncClient(timeout=30) as client:
        answers = [
            await client.post(f"{base}/openai/chat%3Fcompletions", json=CHAT),
            await client.post(f"{base}/openai/chat/completions", json={**CHAT, "max_tokens": "x"}),
            await client.post(f"{base}/openai/files", json=CHAT),
            await client.post(f"{base}/openai/chat/completions", content=b"x", headers={"content-encoding": "lzma"}),
            await client.post(f"{base}/openai/chat/completions", json=CHAT),
        ]
    assert [a.status_code for a in answers] == [400, 400, 403, 415, 200]
    rows = await log_rows(db, account, 5)
    assert sorted(r["status_code"] for r in rows) == [200, 400, 400, 403, 415]
