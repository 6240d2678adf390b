"""Tracing: one OpenTelemetry span per request, when the `tracing` extra is installed and `SPENDGATE_OTEL=true`.

The span (kind SERVER, named `spendgate {provider}` or `spendgate {METHOD}` for non-model paths) continues the
client's trace when a W3C `traceparent` header came in, and ends after the response body has fully passed (so a
stream's span covers the stream). Attributes, filled from the Exchange when the request completes:

    http.request.method, url.path, http.response.status_code, spendgate.request_id, spendgate.account,
    spendgate.gateway, gen_ai.system (provider), gen_ai.request.model, gen_ai.usage.input_tokens,
    gen_ai.usage.output_tokens, spendgate.cost_usd (decimal string), spendgate.billing_mode, spendgate.step,
    spendgate.error

No header value, key or body is put on a span. Exporters are configured the OpenTelemetry way (the SDK's
`OTEL_*` environment variables, or a TracerProvider the embedding application installed); the gateway only asks
for the global tracer. Placed right inside RequestLog, so the request id exists and refusals are traced too.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.exchange import Exchange


def _tracer_or_fail() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise RuntimeError("SPENDGATE_OTEL=true needs the tracing extra: pip install 'spendgate[tracing]'") from exc
    return trace.get_tracer("spendgate")


class Tracing:
    def __init__(self, app: ASGIApp, *, tracer: Any = None) -> None:
        self.app = app
        self.tracer = tracer if tracer is not None else _tracer_or_fail()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from opentelemetry import propagate, trace

        carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
                   if k.lower() in (b"traceparent", b"tracestate")}
        context = propagate.extract(carrier)
        ex = Exchange.of(scope)
        with self.tracer.start_as_current_span(f"spendgate {scope['method']}", context=context,
                                               kind=trace.SpanKind.SERVER) as span:
            span.set_attribute("http.request.method", scope["method"])
            span.set_attribute("url.path", scope.get("path", ""))
            try:
                await self.app(scope, receive, send)
            finally:
                _describe(span, ex)


def _describe(span: Any, ex: Exchange) -> None:
    if ex.provider:
        span.update_name(f"spendgate {ex.provider}")
    values: dict[str, Any] = {
        "http.response.status_code": ex.status_code,
        "spendgate.request_id": ex.request_id,
        "spendgate.account": ex.account_id,
        "spendgate.gateway": ex.gateway_id,
        "gen_ai.system": ex.provider,
        "gen_ai.request.model": ex.model,
        "gen_ai.usage.input_tokens": ex.usage.input_tokens or None,
        "gen_ai.usage.output_tokens": ex.usage.output_tokens or None,
        "spendgate.cost_usd": None if ex.cost_usd is None else str(ex.cost_usd),
        "spendgate.billing_mode": ex.billing_mode,
        "spendgate.step": ex.step,
        "spendgate.error": ex.error,
    }
    for name, value in values.items():
        if value is not None:
            span.set_attribute(name, value)
