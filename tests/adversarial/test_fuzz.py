"""A Hypothesis fuzzer over paths, methods, headers, encodings and bodies, against a real gateway and recording
fakes. For every request it asserts what the gateway promises whatever the bytes:

- never a 5xx from the gateway itself (the fakes are never asked to fail here);
- the gateway's keys reach only the endpoints it prices, with the methods it prices, and never carry a header that
  moves the call to another provider account;
- what the provider received is what was reserved: its output limit times its choices equals the reservation
  (read off `cf-aig-budget-remaining`: inputs are free here, outputs $0.001 a token, and every request has its
  own bucket), and its model is the one the gateway logged;

and after the run: one log row per request, the budget and the credit balance never passed, the ledger's and the
limits' invariants hold, nothing left pending.

Bounded for CI: `MAX_EXAMPLES` requests over loopback, about ten seconds (SPENDGATE_FUZZ_EXAMPLES=5000 for a hunt).
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from tests.adversarial.conftest import GATEWAY_KEYS, PER_TOKEN, HostileStack

MAX_EXAMPLES = int(os.environ.get("SPENDGATE_FUZZ_EXAMPLES", "300"))  # more: a longer hunt by hand
BUDGET = Decimal(100)
DEFAULT_OUTPUT = 4096

# (method, path on the fake) the gateway's keys may reach
PRICED = re.compile(r"POST /(v1/(chat/completions|responses|embeddings|messages|messages/count_tokens)"
                    r"|openai/v1/chat/completions|openai/v1/responses|openai/v1/embeddings"
                    r"|(v1beta|v1)/models/[A-Za-z0-9][A-Za-z0-9._-]*:(generateContent|streamGenerateContent"
                    r"|countTokens|embedContent))")

ROUTES = [
    ("openai", "chat/completions", "gpt-4o-mini"),
    ("openai", "responses", "gpt-4o-mini"),
    ("openai", "embeddings", "text-embedding-3-small"),
    ("groq", "chat/completions", "llama-3.3-70b-versatile"),
    ("grok", "v1/chat/completions", "grok-4"),
    ("anthropic", "v1/messages", "claude-haiku-4-5"),
    ("anthropic", "v1/messages/count_tokens", "claude-haiku-4-5"),
    ("google-ai-studio", "v1beta/models/gemini-2.5-flash:generateContent", None),
    ("google-ai-studio", "v1beta/models/gemini-2.5-flash:streamGenerateContent", None),
    ("compat", "chat/completions", "anthropic/claude-haiku-4-5"),
    ("compat", "chat/completions", "google-ai-studio/gemini-2.5-flash"),
    ("compat", "chat/completions", "openai/gpt-4o-mini"),
    ("openai", "files", "gpt-4o-mini"),
    ("openai", "fine_tuning/jobs", "gpt-4o-mini"),
    ("anthropic", "v1/messages/batches", "claude-haiku-4-5"),
]
PATH_TRICKS = ["", "%3F", "%3fx=/embeddings", "%23", "%2F", "%2f..%2f", "/..", "/.", "/../embeddings", "//",
               "%00", "%5C", "%252F", "%0d", "%20", "?x=1", "?alt=sse", "?beta=true"]
# Hypothesis shrinks towards the first element of a sampled_from: the plain, valid case comes first and most often
RARELY = st.sampled_from([False, False, False, False, True])
LIMIT_VALUES = st.sampled_from(["valid", "valid", "valid", "null", "junk"]).flatmap(lambda kind: {
    "valid": st.integers(1, 3000),
    "null": st.none(),
    "junk": st.one_of(st.integers(-3, 0), st.sampled_from([10**15, 2**63, 10**17]), st.floats(allow_nan=False),
                      st.text(max_size=4), st.booleans(), st.lists(st.integers(0, 3), max_size=2)),
}[kind])
LIMIT_FIELDS = ["max_tokens", "max_completion_tokens", "max_output_tokens", "n", "stream", "generationConfig",
                "generation_config", "thinking"]


@dataclass
class Sent:
    status: int
    headers: dict[str, str]
    provider: str
    recorded: Any  # what the fake recorded (None: nothing reached it)


@st.composite
def bodies(draw: st.DrawFn, provider: str, model: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if model is not None and not draw(RARELY):
        body["model"] = draw(st.sampled_from([model, model + " x", model + "\u0000", 5, "", "m\r\nx: 1"]))
    if provider == "google-ai-studio":
        body["contents"] = [{"role": "user", "parts": [{"text": "hi there"}]}]
    elif "embeddings" in str(model) or draw(st.booleans()):
        body["input"] = "hi there"
    if provider != "google-ai-studio":
        body["messages"] = [{"role": "user", "content": draw(st.text(max_size=20))}]
    fields = LIMIT_FIELDS if provider != "google-ai-studio" else ["generationConfig", "generation_config", "stream"]
    for name in draw(st.lists(st.sampled_from(fields), max_size=3, unique=True)):
        if name in ("generationConfig", "generation_config"):
            inner = draw(st.lists(st.sampled_from(["maxOutputTokens", "max_output_tokens", "candidateCount"]),
                                  min_size=1, max_size=2, unique=True))
            body[name] = {key: draw(LIMIT_VALUES) for key in inner}
            if "candidateCount" in body[name] and isinstance(body[name]["candidateCount"], int):
                body[name]["candidateCount"] = min(abs(body[name]["candidateCount"]), 9)
        elif name == "thinking":
            body[name] = {"type": "enabled", "budget_tokens": draw(LIMIT_VALUES)}
        elif name == "stream":
            body[name] = draw(st.sampled_from([False, True, "yes", None]))
        elif name == "n":
            body[name] = draw(st.sampled_from([1, 2, 3, None, 0, 200, "2"]))
        else:
            body[name] = draw(LIMIT_VALUES)
    return body


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, str, dict[str, str], bytes]:
    """(provider, method, path tail, headers, body bytes)."""
    provider, tail, model = draw(st.sampled_from(ROUTES))
    if draw(RARELY):
        trick = draw(st.sampled_from(PATH_TRICKS))
        cut = draw(st.integers(0, len(tail)))
        tail = tail[:cut] + trick + tail[cut:] if draw(st.booleans()) else tail + trick
    method = "POST" if not draw(RARELY) else draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH"]))
    body = json.dumps(draw(bodies(provider, model))).encode()
    if draw(RARELY):
        body = body.replace(b'"messages"', b'"max_tokens": 100000, "max_tokens": 7, "messages"', 1)
    if draw(RARELY) and draw(RARELY):
        body = b'{"model": "gpt-4o-mini", "max_tokens": NaN}'
    headers = {"content-type": "application/json"}
    if draw(RARELY):
        body = gzip.compress(body)
        headers["content-encoding"] = "gzip"
        if draw(RARELY):
            headers["content-encoding"] = draw(st.sampled_from(["compress", "br", "gzip, identity", "zstd"]))
    if draw(RARELY):  # the client's own key: pass-through
        headers.update({"authorization": "Bearer sk-client", "x-api-key": "sk-client", "x-goog-api-key": "sk-c"})
    if draw(RARELY):
        headers["openai-organization"] = "org-victim"
    if draw(RARELY) and draw(RARELY):
        headers["cf-aig-custom-cost"] = json.dumps({"per_token_in": 0, "per_token_out": draw(st.sampled_from(
            [0, 1e30, -1, "x"]))})
    return provider, method, tail, headers, body


def send(base: str, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request(method, target, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def limit_sent(provider: str, path: str, body: Any) -> tuple[int | None, int]:
    """(the output limit the provider received, its choices), read as the provider reads it on that endpoint."""
    if not isinstance(body, dict):
        return None, 1
    if provider == "google-ai-studio":
        config = body.get("generationConfig") or body.get("generation_config") or {}
        limit = config.get("maxOutputTokens", config.get("max_output_tokens"))
        return limit, config.get("candidateCount", config.get("candidate_count")) or 1
    if path.endswith("/responses"):
        return body.get("max_output_tokens"), 1
    fields = ("max_tokens",) if path.endswith("/messages") else ("max_tokens", "max_completion_tokens")
    values = [body[k] for k in fields if body.get(k) is not None]
    assert len(values) <= 1, body  # never two numbers a provider could choose between
    choices = body.get("n") or 1 if path.endswith("chat/completions") else 1  # only Chat Completions has `n`
    return (values[0] if values else None), choices


def check_one(stack: HostileStack, sent: Sent, request_body: bytes) -> str:
    """Assert the promises for one request; returns what was checked (for the run's tally)."""
    assert sent.status < 500, (sent.status, request_body[:200])
    for seen in stack.seen():
        keys = {seen.headers.get(h, "").removeprefix("Bearer ") for h in ("authorization", "x-api-key",
                                                                           "x-goog-api-key")}
        if keys & GATEWAY_KEYS:
            assert PRICED.fullmatch(f"{seen.method} {seen.path}"), seen
            assert "openai-organization" not in seen.headers
    remaining = sent.headers.get("cf-aig-budget-remaining")
    if sent.recorded is None or remaining is None or not 200 <= sent.status < 300:
        return f"{sent.status // 100}xx"
    reserved = (BUDGET - Decimal(remaining)) / PER_TOKEN
    if "embed" in sent.recorded.path or "count" in sent.recorded.path.lower():
        assert reserved == 0  # no output (a limit-looking field there is not the provider's limit)
    else:
        limit, choices = limit_sent(sent.provider, sent.recorded.path, sent.recorded.body)
        assert reserved == (limit if limit is not None else DEFAULT_OUTPUT) * choices, (reserved, sent.recorded.body)
    return "reservation = what the provider got"


def test_fuzz_the_canonical_call(hostile: HostileStack, database_url: str) -> None:
    account, base = hostile.new_gateway(credits_usd="1000", allow_custom_cost=True)
    hostile.rule(account, name="per-request", budget_usd=str(BUDGET), window="daily",
                 scope={"metadata.n": {"split": True}})
    prefix = urlsplit(base).path
    count = 0
    tally: Counter[str] = Counter()

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(request=requests())
    def one(request: tuple[str, str, str, dict[str, str], bytes]) -> None:
        nonlocal count
        provider, method, tail, headers, body = request
        hostile.clear()
        count += 1
        headers = {**headers, "cf-aig-metadata": json.dumps({"n": count})}
        status, answer = send(base, method, f"{prefix}/{provider}/{tail}", headers, body)
        upstream = answer.get("cf-aig-provider", provider)
        recorded = hostile.recorder(upstream).requests if upstream in hostile.apps else []
        sent = Sent(status, answer, upstream, recorded[-1] if recorded else None)
        tally[check_one(hostile, sent, body)] += 1

    one()
    print(dict(tally))
    # the fuzzer must reach every outcome, or it proves nothing: served calls compared, and refusals of each kind
    assert tally["reservation = what the provider got"] >= 20 and tally["4xx"] >= 60, tally
    asyncio.run(_after(database_url, account, count))


async def _after(database_url: str, account: str, count: int) -> None:
    db = await Database.connect(database_url, min_size=1, max_size=2)
    try:
        rows: list[Any] = []
        for _ in range(100):
            rows = await db.pool.fetch("SELECT status_code FROM request_logs WHERE account_id = $1", account)
            if len(rows) >= count:
                break
            await asyncio.sleep(0.1)
        assert len(rows) == count  # one row per request, refused ones included
        assert all(r["status_code"] < 500 for r in rows)
        query = ("SELECT b.spent, b.pending FROM limits.buckets b JOIN limits.rules r ON r.id = b.rule_id "
                 "WHERE r.account_id = $1")
        buckets = await db.pool.fetch(query, account)
        for _ in range(100):  # settlements after the last response are a moment behind it
            if all(b["pending"] == 0 for b in buckets):
                break
            await asyncio.sleep(0.1)
            buckets = await db.pool.fetch(query, account)
        assert all(b["pending"] == 0 and b["spent"] <= int(BUDGET * 10**9) for b in buckets)
        await assert_all_invariants(db)
    finally:
        await db.close()
