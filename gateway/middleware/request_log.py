"""RequestLog: the outermost layer. It gives the request its id (`cf-aig-log-id`, and a ContextVar that inner
layers and log lines see), watches the response go out, and after it completed queues one log row — for
refused requests too (400/401/402/403/429 from any inner layer).

Logging follows the gateway's `collect_logs` unless `cf-aig-collect-log: true|false` says otherwise; bodies
are kept when the gateway's `log_payloads` and `cf-aig-collect-log-payload` allow (up to 1 MiB each). Requests
for an unknown account or gateway are not logged (there is no tenant to log them under), nor requests a gateway
with `authentication` refused for want of a valid token or identity: anyone can send those, and written to the
tenant's log they would fill it and, under `log_retention`, push its real rows out (they are counted in metrics).
No header is logged, so provider keys, gateway tokens and JWTs never reach a log row.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.context import request_id_var
from gateway.db import unavailable
from gateway.errors import UnknownAccount, UnknownGateway
from gateway.exchange import Exchange
from gateway.gateways import GatewayStore
from gateway.logs.writer import LogWriter
from gateway.paths import locate

MAX_LOGGED_BODY = 1024 * 1024


def _flag(ex: Exchange, scope: Scope, name: bytes) -> bool | None:
    value = ex.header(scope, name)
    if value is None:
        return None
    text = value.decode("latin-1").strip().lower()
    return True if text == "true" else False if text == "false" else None


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    return data[:MAX_LOGGED_BODY].decode("utf-8", "replace")


def _request_body(ex: Exchange) -> bytes | None:
    """The body as the log keeps it: with the guardrails' findings replaced when they found any."""
    if ex.guardrails is not None and ex.guardrails.logged_request is not None:
        return ex.guardrails.logged_request
    return ex.decoded_body if ex.decoded_body is not None else ex.body


class RequestLog:
    """`observe(exchange, seconds)` is called once per request after it completed (the metrics)."""

    def __init__(self, app: ASGIApp, *, gateways: GatewayStore, writer: LogWriter,
                 observe: Callable[[Exchange, float], None] | None = None) -> None:
        self.app = app
        self.gateways = gateways
        self.writer = writer
        self.observe = observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ex = Exchange.of(scope)
        ex.log_id = ex.request_id  # a fresh uuid4, made with the Exchange
        token = request_id_var.set(ex.request_id)
        where = locate(scope)
        gateway = None
        if where is not None and where.account:
            try:
                gateway = ex.gateway = await self.gateways.get(where.account, where.gateway)
            except (UnknownAccount, UnknownGateway):
                gateway = None
            except Exception as exc:
                if not unavailable(exc):
                    raise
                gateway = None  # no settings to log under: ServerErrors answers 503 when an inner layer needs them
        asked = _flag(ex, scope, b"cf-aig-collect-log") if gateway is not None else None
        collect = gateway is not None and (asked if asked is not None else gateway.settings.collect_logs)
        payloads = collect and gateway is not None and gateway.settings.log_payloads and \
            _flag(ex, scope, b"cf-aig-collect-log-payload") is not False
        ex.collect_log, ex.collect_payload = collect, payloads
        captured = bytearray()
        status = 500

        def stranger() -> bool:
            """Refused by the gateway's authentication: not the tenant's traffic, and not written to its log."""
            return gateway is not None and gateway.settings.authentication and not ex.authenticated

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if collect and not stranger():
                    message["headers"] = [*message.get("headers", []), (b"cf-aig-log-id", ex.request_id.encode())]
            elif message["type"] == "http.response.body" and payloads and ex.response_body is None:
                room = MAX_LOGGED_BODY - len(captured)
                if room > 0:
                    captured.extend(message.get("body", b"")[:room])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            ex.error = ex.error or f"internal error: {type(exc).__name__}"
            raise
        finally:
            request_id_var.reset(token)
            if ex.status_code is None:
                ex.status_code = status
            if self.observe is not None:
                self.observe(ex, time.perf_counter() - ex.started)
            if collect and gateway is not None and not stranger():
                self.writer.submit(self.row(ex, status, bytes(captured) if payloads else None),
                                   gateway.settings.log_retention)

    def row(self, ex: Exchange, status: int, captured: bytes | None) -> dict[str, Any]:
        assert ex.gateway is not None
        identity = ex.identity.as_dict() if ex.identity is not None else None
        u = ex.usage
        return {
            "id": uuid.UUID(ex.request_id), "account_id": ex.gateway.account_id, "gateway_id": ex.gateway.id,
            "created_at": datetime.fromtimestamp(ex.started_at, UTC), "provider": ex.provider, "model": ex.model,
            "path": ex.path, "status_code": status, "success": 200 <= status < 400 and ex.error is None,
            "cached": ex.cached, "step": ex.step,
            "duration_ms": Decimal(str(round((time.perf_counter() - ex.started) * 1000, 3))),
            "ttfb_ms": None if ex.ttfb_ms is None else Decimal(str(round(ex.ttfb_ms, 3))),
            "tokens_in": u.input_tokens, "tokens_out": u.output_tokens, "tokens_cache_read": u.cache_read_tokens,
            "tokens_cache_write": u.cache_write_tokens, "cost_usd": ex.cost_usd, "custom_cost": ex.custom_cost,
            "usage_estimated": ex.usage_estimated, "usage_details": u.details() or None,
            "billing_mode": ex.billing_mode, "zdr_applied": ex.zdr_applied, "zdr_reason": ex.zdr_reason,
            "identity": identity, "metadata": ex.metadata, "request_size": ex.request_size,
            "response_size": ex.response_size, "error": ex.error,
            "guardrails": ex.guardrails.as_json() if ex.guardrails is not None else None,
            "request_body": _text(_request_body(ex))
            if ex.collect_payload else None,
            "response_body": _text(ex.response_body if ex.response_body is not None else captured)
            if ex.collect_payload else None,
        }
