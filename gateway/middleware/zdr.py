"""ZeroDataRetention: decides whether this request asks for ZDR — the gateway's `zdr` setting, overridden per
request by `cf-aig-zdr: true|false` (anything else → 400).

The decision is applied where the billing mode is known (gateway/providers/target.py): ZDR applies only to
unified billing, and routes to the provider's ZDR configuration (`SPENDGATE_UPSTREAM_<P>_ZDR`,
`SPENDGATE_KEY_<P>_ZDR`). A provider without one falls back to its standard configuration, and the log records
`zdr_applied=false` with the reason. ZDR does not switch logging off: logging has its own settings.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import HeaderError, to_response
from gateway.exchange import Exchange


class ZeroDataRetention:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ex = Exchange.of(scope)
        value = ex.header(scope, b"cf-aig-zdr")
        raw = value.decode("latin-1").strip().lower() if value is not None else None
        if raw is not None and raw not in ("true", "false"):
            answer = to_response(HeaderError("cf-aig-zdr", "cf-aig-zdr must be true or false"))
            ex.status_code, ex.error = answer.status, answer.message
            await answer.render()(scope, receive, send)
            return
        default = bool(ex.gateway and ex.gateway.settings.zdr)
        ex.zdr_requested = (raw == "true") if raw is not None else default
        await self.app(scope, receive, send)
