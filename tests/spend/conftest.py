"""A real gateway (uvicorn on loopback, background workers on) in front of fake providers, with a controllable
clock for spend-limit windows, an alert webhook receiver and a local IdP for identity policies."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.app import create_app
from gateway.settings import Settings
from harness.cluster import Operator
from harness.fakes import FakeServer
from harness.fakes.providers import start_provider_fakes
from tests.eventually import eventually_sync
from tests.middleware.test_identity import AUD, IdP

ADMIN = "spend-tests-admin"
MODELS = ("gpt-4o-mini", "gpt-4o", "llama-3.3-70b-versatile", "claude-haiku-4-5")


class Webhook:
    """Receives alert POSTs; `fail` makes it answer 500."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.fail = 0
        hook = self

        async def receive(request: Request) -> JSONResponse:
            if hook.fail > 0:
                hook.fail -= 1
                return JSONResponse({"error": "try later"}, 500)
            hook.received.append(await request.json())
            return JSONResponse({"ok": True})

        self.server = FakeServer(Starlette(routes=[Route("/hook", receive, methods=["POST"])])).start()
        self.url = self.server.url + "/hook"


@dataclass
class Clock:
    """What the gateway believes "now" is. Starts a few days ahead of real time (so that nothing a test reserves
    is ever overdue for the real-time sweeper) at 12:00 UTC on a Wednesday."""

    now: datetime = field(default_factory=lambda: _wednesday_noon_ahead())

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def _wednesday_noon_ahead() -> datetime:
    day = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) + timedelta(days=7)
    return day + timedelta(days=(2 - day.weekday()) % 7)


@dataclass
class SpendStack:
    gateway: FakeServer
    fakes: dict[str, FakeServer]
    apps: dict[str, Any]
    webhook: Webhook
    idp: IdP
    settings: Settings

    @property
    def services(self) -> Any:
        return self.gateway.app.state.services

    def recorder(self, provider: str) -> Any:
        return self.apps[provider].state.recorder

    @property
    def operator(self) -> Operator:
        return Operator(self.gateway.url, ADMIN)

    def admin(self) -> httpx.Client:
        return self.operator.admin()

    def new_gateway(self, *, credits_usd: str | None = None, **settings: Any) -> tuple[str, str]:
        """A fresh account with gateway `g` whose models cost $0.001 per output token and nothing per input
        token (so a request's worst case equals its cost when the fake reports max_tokens output tokens)."""
        account = self.operator.new_account(credits_usd=credits_usd, models=MODELS, **settings)
        return account, f"{self.gateway.url}/v1/{account}/g"

    def rule(self, account: str, **spec: Any) -> dict[str, Any]:
        return self.operator.rule(account, **spec)

    def buckets(self, account: str, rule_id: str) -> list[dict[str, Any]]:
        return self.operator.buckets(account, rule_id)

    def credits(self, account: str) -> dict[str, Any]:
        return self.operator.credits(account)

    def settled(self) -> None:
        """Wait until this gateway holds no unsettled reservation: a JSON answer is settled before its body goes
        out, but a stream's settlement (and a refused call's release) commits after the client has its last byte,
        so a test that reads balances or buckets right after an answer waits for it first."""
        def holds_open() -> float:
            text = httpx.get(self.gateway.url + "/metrics").text
            line = next(line for line in text.splitlines() if line.startswith("spendgate_holds_open "))
            return float(line.split()[1])

        eventually_sync(holds_open, until=lambda n: n == 0, what="every settlement")


@pytest.fixture(scope="package")
def spend_stack(database_url: str) -> Iterator[SpendStack]:
    fakes = start_provider_fakes()
    webhook, idp = Webhook(), IdP()
    settings = Settings(database_url=database_url, admin_token=ADMIN, providers=fakes.providers,
                        jwt_issuer=idp.issuer, jwks_url=idp.issuer + "/cdn-cgi/access/certs", jwt_audience=(AUD,),
                        db_pool_max=15)
    gateway = FakeServer(create_app(settings, background=True), lifespan="on").start()
    try:
        yield SpendStack(gateway, fakes.servers, fakes.apps, webhook, idp, settings)
    finally:
        gateway.stop()
        fakes.stop()
        for server in (webhook.server, idp.server):
            server.stop()


@pytest.fixture
def clock(spend_stack: SpendStack) -> Iterator[Clock]:
    services = spend_stack.services
    original = services.clock
    fake = Clock()
    services.clock = fake
    try:
        yield fake
    finally:
        services.clock = original
