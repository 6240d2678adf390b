"""create_app: the whole gateway in one place. The request path reads top to bottom in `chain`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.admin.app import admin_app
from gateway.admin.token import ensure_admin_token
from gateway.db import Database
from gateway.errors import json_error
from gateway.limits.planner import RouterPlanner
from gateway.middleware.access_identity import AccessIdentity, JWTVerifier
from gateway.middleware.attribution import Attribution
from gateway.middleware.dynamic_routes import DynamicRoutes
from gateway.middleware.gateway_auth import GatewayAuth, TokenStore
from gateway.middleware.request_log import RequestLog
from gateway.middleware.server_errors import ServerErrors
from gateway.middleware.spend_limits import SpendLimits
from gateway.middleware.tracing import Tracing
from gateway.middleware.zdr import ZeroDataRetention
from gateway.providers.router import ProviderRouter
from gateway.services import Services
from gateway.settings import Settings


class _StartServices:
    """Start the shared services on first use when no lifespan reached us (mounted inside another app)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self.services.started:
            await self.services.start()
        await self.app(scope, receive, send)


class _RefuseNewlines:
    """A path with a line feed never reaches routing: Starlette's mounts do not match one, so it would answer a
    plain-text 404. 400 JSON instead (other control characters reach the chain, which refuses and logs them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "\n" in scope["path"]:
            await json_error(400, "the path contains a line feed")(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _Chain:
    """The request path, built once the shared services exist. Outermost first:

    RequestLog ─► (Tracing) ─► ServerErrors ─► GatewayAuth ─► AccessIdentity ─► Attribution ─► ZeroDataRetention
        ─► DynamicRoutes ─► SpendLimits ─► ProviderRouter
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self._app: ASGIApp | None = None

    def build(self) -> ASGIApp:
        s = self.services
        router = ProviderRouter(settings=s.settings, gateways=s.gateways, providers=s.providers, client=s.http)
        app: ASGIApp = router
        verifier = JWTVerifier.from_settings(s.settings, s.http)
        tokens = s.extras.setdefault("tokens", TokenStore(s.db, s.gateways))

        def clock() -> datetime:
            return s.clock()

        fail_open = s.settings.db_unavailable == "fail_open_byok"
        chain: list[tuple[Any, dict[str, Any]]] = [  # outermost first
            (RequestLog, {"gateways": s.gateways, "writer": s.log_writer, "observe": s.metrics.observe}),
            *([(Tracing, {})] if s.settings.otel else []),  # SPENDGATE_OTEL=true, with the `tracing` extra
            (ServerErrors, {"on_db_unavailable": s.db.connection_lost}),
            (GatewayAuth, {"gateways": s.gateways, "tokens": tokens, "verifier": verifier}),
            (AccessIdentity, {"verifier": verifier}),
            (Attribution, {}),
            (ZeroDataRetention, {}),
            (DynamicRoutes, {"routes": s.route_store, "limit_store": s.limit_store,
                             "max_body_bytes": s.settings.max_body_bytes, "clock": clock}),
            (SpendLimits, {"limits": s.limits, "store": s.limit_store, "planner": RouterPlanner(router),
                           "clock": clock, "settlements": s.settlements,
                           "hold_ttl": timedelta(seconds=s.settings.hold_ttl_seconds), "fail_open": fail_open}),
        ]
        for layer, options in reversed(chain):
            app = layer(app, **options)
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.services.started:
            await self.services.start()
        if self._app is None:
            self._app = self.build()
        await self._app(scope, receive, send)


async def _announce_admin_token(services: Services) -> None:
    await ensure_admin_token(services.db, services.settings.admin_token)


def create_app(settings: Settings | None = None, *, db: Database | None = None, background: bool = True) -> Starlette:
    """The gateway. `background=False` runs no sweeper or auto top-up worker in this process (tests, tools)."""
    settings = settings or Settings.from_env()
    services = Services(settings, db, background=background)
    services.on_start(lambda: _announce_admin_token(services))

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        if services.started and await services.db.is_current():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": "database unreachable or migrations pending"}, 503)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", services.metrics.endpoint),
            Mount("/admin", app=admin_app(services)),
            Mount("/v1", app=_Chain(services)),
        ],
        lifespan=lifespan,
    )
    app.state.services = services
    app.add_middleware(_StartServices, services=services)
    app.add_middleware(_RefuseNewlines)
    # Behind a load balancer: client address and scheme from X-Forwarded-* only when the peer is a trusted proxy
    # (SPENDGATE_TRUSTED_PROXIES, default loopback).
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))
    return app
