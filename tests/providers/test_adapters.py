"""The router and its adapters in isolation, with httpx.MockTransport as the upstream."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from gateway.db import Database
from gateway.exchange import Exchange
from gateway.gateways import GatewayStore
from gateway.providers.router import ProviderRouter
from gateway.providers.sse import SSEParser
from gateway.providers.store import ProviderStore
from gateway.settings import PROVIDERS, ProviderConfig, Settings


def sse(*events: tuple[str | None, dict[str, Any]]) -> bytes:
    out = b""
    for name, data in events:
        out += (f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(data).encode() + b"\n\n"
    return out


async def call(db: Database, provider: str, path: str, body: dict[str, Any], reply: httpx.Response,
               headers: dict[str, str] | None = None) -> tuple[Exchange, httpx.Request, bytes, dict[str, str]]:
    account = f"m-{uuid.uuid4().hex[:8]}"
    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", account)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)  # a fresh, unread stream: the router reads the body as a stream
        return httpx.Response(reply.status_code, headers=reply.headers, stream=httpx.ByteStream(reply.content))

    providers = {p: ProviderConfig(p, f"https://{p}.example", key="gw-key") for p in PROVIDERS}
    router = ProviderRouter(settings=Settings(providers=providers), gateways=GatewayStore(db),
                            providers=ProviderStore(db), client=httpx.AsyncClient(
                                transport=httpx.MockTransport(handler)))
    raw = json.dumps(body).encode()
    scope = {"type": "http", "method": "POST", "path": f"/{account}/default/{provider}/{path}", "root_path": "",
             "query_string": b"", "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()]}
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await router(scope, receive, send)
    out = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
    response_headers = {k.decode(): v.decode() for k, v in messages[0]["headers"]}
    return Exchange.of(scope), seen[0], out, response_headers


async def test_hop_by_hop_and_gateway_headers_do_not_reach_upstream(db: Database) -> None:
    reply = httpx.Response(200, json={"usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    headers = {"authorization": "Bearer sk-own", "connection": "keep-alive", "cf-aig-metadata": "{}",
               "cf-access-jwt-assertion": "x.y.z", "te": "trailers", "x-custom": "kept"}
    ex, request, _, _ = await call(db, "openai", "chat/completions", {"model": "gpt-4o-mini"}, reply, headers)
    sent = {k.lower() for k in request.headers}
    assert "x-custom" in sent and request.headers["authorization"] == "Bearer sk-own"
    assert not sent & {"te", "cf-aig-metadata", "cf-access-jwt-assertion"}  # (httpx adds its own connection)
    assert str(request.url) == "https://openai.example/chat/completions"
    assert ex.billing_mode == "byok" and ex.usage.input_tokens == 3 and ex.cost_usd is not None


async def test_anthropic_usage_counts_cache_tokens_as_prompt(db: Database) -> None:
    reply = httpx.Response(200, json={"usage": {"input_tokens": 10, "output_tokens": 5,
                                                "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7}})
    ex, request, _, _ = await call(db, "anthropic", "v1/messages", {"model": "claude-sonnet-4-6"}, reply)
    assert request.headers["x-api-key"] == "gw-key" and ex.billing_mode == "unified"
    assert (ex.usage.input_tokens, ex.usage.output_tokens, ex.usage.cache_read_tokens,
            ex.usage.cache_write_tokens) == (117, 5, 100, 7)


async def test_anthropic_stream_usage_from_start_and_delta(db: Database) -> None:
    body = sse(("message_start", {"type": "message_start", "message": {"model": "m", "usage": {
        "input_tokens": 4, "output_tokens": 1, "cache_read_input_tokens": 2}}}),
        ("message_delta", {"type": "message_delta", "usage": {"output_tokens": 9}}))
    reply = httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    ex, _, out, _ = await call(db, "anthropic", "v1/messages", {"model": "claude-sonnet-4-6", "stream": True},
                               reply, {"x-api-key": "k"})
    assert out == body and (ex.usage.input_tokens, ex.usage.output_tokens) == (6, 9)


async def test_gemini_model_from_path_and_thoughts_as_output(db: Database) -> None:
    reply = httpx.Response(200, json={"usageMetadata": {"promptTokenCount": 8, "candidatesTokenCount": 3,
                                                        "thoughtsTokenCount": 4, "cachedContentTokenCount": 2}})
    ex, _request, _, headers = await call(db, "google-ai-studio", "v1beta/models/gemini-2.5-flash:generateContent",
                                         {}, reply, {"x-goog-api-key": "g"})
    assert ex.model == "gemini-2.5-flash" and headers["cf-aig-model"] == "gemini-2.5-flash"
    assert (ex.usage.input_tokens, ex.usage.output_tokens, ex.usage.cache_read_tokens) == (8, 7, 2)


async def test_openai_responses_stream_usage_and_hidden_usage_chunk(db: Database) -> None:
    body = sse((None, {"choices": [{"delta": {"content": "hi"}}], "model": "gpt-4o-mini"}),
               (None, {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}))
    body += b"data: [DONE]\n\n"
    reply = httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})
    ex, request, out, _ = await call(db, "openai", "chat/completions", {"model": "gpt-4o-mini", "stream": True},
                                     reply, {"authorization": "Bearer k"})
    assert json.loads(request.content)["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in out and b"[DONE]" in out and ex.usage.input_tokens == 5


@pytest.mark.parametrize("chunks", [[b"data: {\"a\":1}\n\n"], [b"data: {\"a\"", b":1}\n", b"\n"],
                                    [b"data: {\"a\":1}\r\n\r\n"]])
def test_sse_parser_handles_any_chunking(chunks: list[bytes]) -> None:
    parser = SSEParser()
    events = [e for c in chunks for e in parser.feed(c)]
    assert [e.json() for e in events] == [{"a": 1}] and b"".join(e.raw for e in events) == b"".join(chunks)
