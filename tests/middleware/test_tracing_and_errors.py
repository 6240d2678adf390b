"""Tracing and ServerErrors, each alone in front of a tiny ASGI app."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.exchange import Exchange, Usage
from gateway.middleware.server_errors import ServerErrors
from gateway.middleware.tracing import Tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


async def served(scope: Any, receive: Any, send: Any) -> None:
    ex = Exchange.of(scope)
    ex.provider, ex.model, ex.status_code, ex.billing_mode = "openai", "gpt-5", 200, "byok"
    ex.usage, ex.cost_usd = Usage(input_tokens=12, output_tokens=3), Decimal("0.0042")
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def post(app: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.post("/acct/gw/openai/chat/completions", headers=headers or {}, json={})


async def test_one_span_per_request_continuing_the_client_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = Tracing(served, tracer=provider.get_tracer("test"))
    await post(app, {"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01", "authorization": "Bearer sk-secret"})
    [span] = exporter.get_finished_spans()
    assert span.name == "spendgate openai"
    assert format(span.context.trace_id, "032x") == TRACE_ID  # the client's trace goes on
    attributes = dict(span.attributes or {})
    assert attributes["gen_ai.request.model"] == "gpt-5" and attributes["gen_ai.usage.input_tokens"] == 12
    assert attributes["spendgate.cost_usd"] == "0.0042" and attributes["http.response.status_code"] == 200
    assert "sk-secret" not in repr(attributes)  # no header value on a span


def failing(exc: Exception) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise exc

    return app


@pytest.mark.parametrize(("exc", "status", "message"), [
    (ConnectionRefusedError(111, "refused"), 503, "Database unavailable"),
    (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), 503, "Database unavailable"),
    (ValueError("a bug"), 500, "Internal error"),
])
async def test_server_errors_answer_json_before_the_response_started(exc: Exception, status: int,
                                                                     message: str) -> None:
    lost: list[bool] = []
    app = ServerErrors(failing(exc), on_db_unavailable=lambda: lost.append(True))
    answer = await post(app)
    assert answer.status_code == status and answer.json()["success"] is False
    assert answer.json()["error"]["message"].startswith(message)
    assert "a bug" not in answer.text  # nothing of the exception reaches the client
    assert lost == ([True] if status == 503 else [])
    if status == 503:
        assert answer.headers["retry-after"] == "2" and answer.json()["error"]["retryable"] is True


async def test_server_errors_reraise_once_the_response_started() -> None:
    async def breaks_mid_stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-stream")

    with pytest.raises(RuntimeError):
        await post(ServerErrors(breaks_mid_stream))
