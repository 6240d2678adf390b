"""create_app: the whole gateway in one place. The request path reads top to bottom in `chain`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.admin.app import admin_app
from gateway.admin.token import ensure_admin_token
from gateway.dashboard.app import dashboard_app
from gateway.db import Database
from gateway.errors import InvalidRequest, to_response
from gateway.identity import JWTVerifier
from gateway.middleware.access_identity import AccessIdentity
from gateway.middleware.attribution import Attribution
from gateway.middleware.cache import ResponseCache
from gateway.middleware.dynamic_routes import DynamicRoutes
from gateway.middleware.gateway_auth import GatewayAuth
from gateway.middleware.guardrails import Guardrails
from gateway.middleware.rate_limits import HitCounter
from gateway.middleware.request_log import RequestLog
from gateway.middleware.server_errors import ServerErrors
from gateway.middleware.spend_limits import SpendLimits
from gateway.middleware.spend_plan import RouterPlanner
from gateway.middleware.tracing import Tracing
from gateway.middleware.zdr import ZeroDataRetention
from gateway.providers.router import ProviderRouter
from gateway.services import Running, Services
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
            await to_response(InvalidRequest("the path contains a line feed")).render()(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _Chain:
    """The request path, built once the shared services exist. Outermost first:

    RequestLog ─► (Tracing) ─► ServerErrors ─► GatewayAuth ─► AccessIdentity ─► Attribution ─► ZeroDataRetention
        ─► Guardrails ─► DynamicRoutes ─► ResponseCache ─► SpendLimits ─► ProviderRouter
    """

    def __init__(self, services: Services) -> None:
        self.services = services
        self._app: ASGIApp | None = None

    def build(self) -> ASGIApp:
        s, r = self.services.settings, self.services.running
        router = ProviderRouter(settings=s, gateways=r.gateways, providers=r.providers, client=r.http)
        verifier = JWTVerifier.from_settings(s, r.http)
        chain = [  # outermost first
            Middleware(RequestLog, gateways=r.gateways, writer=r.log_writer, observe=self.services.metrics.observe),
            *([Middleware(Tracing)] if s.otel else []),  # SPENDGATE_OTEL=true, with the `tracing` extra
            Middleware(ServerErrors, on_db_unavailable=r.db.connection_lost),
            Middleware(GatewayAuth, gateways=r.gateways, tokens=r.tokens, verifier=verifier),
            Middleware(AccessIdentity, verifier=verifier),
            Middleware(Attribution),
            Middleware(ZeroDataRetention),
            Middleware(Guardrails, gateways=r.gateways, max_body_bytes=s.max_body_bytes),
            Middleware(DynamicRoutes, routes=r.route_store, limit_store=r.limit_store,
                       max_body_bytes=s.max_body_bytes, clock=r.clock),
            Middleware(ResponseCache, prepare=router.prepare, store=r.cache, ledger=r.ledger,
                       rates=HitCounter(r.limits, r.settlements, r.clock, timedelta(seconds=s.hold_ttl_seconds)),
                       policies=r.limit_store.policies),
            Middleware(SpendLimits, limits=r.limits, store=r.limit_store, planner=RouterPlanner(router),
                       clock=r.clock, settlements=r.settlements, hold_ttl=timedelta(seconds=s.hold_ttl_seconds),
                       fail_open=s.db_unavailable == "fail_open_byok"),
        ]
        app: ASGIApp = router
        for cls, args, options in reversed(chain):
            app = cls(app, *args, **options)
        return app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.services.started:
            await self.services.start()
        if self._app is None:
            self._app = self.build()
        await self._app(scope, receive, send)


def create_app(settings: Settings | None = None, *, db: Database | None = None, background: bool = True) -> Starlette:
    """The gateway. `background=False` runs no sweeper or auto top-up worker in this process (tests, tools)."""
    settings = settings or Settings.from_env()
    services = Services(settings, db, background=background)

    async def announce_admin_token(running: Running) -> None:
        await ensure_admin_token(running.db, settings.admin_token)

    services.on_start(announce_admin_token)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        if services.started and await services.running.db.is_current():
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
            Mount("/v1", app=_Chain(services)),  # first: nearly every request is one (no other route overlaps it)
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", services.metrics.endpoint),
            Mount("/admin", app=admin_app(services)),
            Mount("/dashboard", app=dashboard_app(services)),
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
