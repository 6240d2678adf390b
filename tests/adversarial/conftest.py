"""A real gateway (uvicorn on loopback) in front of fake providers that record everything that reaches them, for
requests a hostile client crafts: paths, bodies, encodings, headers, limits, disconnects.

Prices: every model in `MODELS` costs $0.001 per output token and nothing per input token, so a request's
reservation is exactly `0.001 x its output bound` and `cf-aig-budget-remaining` tells what was reserved.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import pytest

from gateway.app import create_app
from gateway.db import Database
from gateway.settings import PROVIDERS, Settings
from harness.cluster import Operator
from harness.fakes import FakeServer
from harness.fakes.common import Recorder
from harness.fakes.providers import start_provider_fakes
from tests.eventually import eventually

ADMIN = "adversarial-admin"
MAX_BODY = 256 * 1024
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-haiku-4-5", "gemini-2.5-flash",
          "gemini-2.0-flash-lite", "gemini-2.5-pro", "llama-3.3-70b-versatile", "grok-4")
PER_TOKEN = Decimal("0.001")
GATEWAY_KEYS = {f"gw-key-{p}" for p in PROVIDERS}


@dataclass
class HostileStack:
    gateway: FakeServer
    fakes: dict[str, FakeServer]
    apps: dict[str, Any]

    @property
    def operator(self) -> Operator:
        return Operator(self.gateway.url, ADMIN)

    def recorder(self, provider: str) -> Recorder:
        return self.apps[provider].state.recorder  # type: ignore[no-any-return]

    def clear(self) -> None:
        for app in self.apps.values():
            app.state.recorder.clear()

    def seen(self) -> list[Any]:
        return [s for app in self.apps.values() for s in app.state.recorder.seen]

    def new_gateway(self, *, credits_usd: str | None = None, models: tuple[str, ...] = MODELS,
                    **settings: Any) -> tuple[str, str]:
        account = self.operator.new_account(credits_usd=credits_usd, models=models, **settings)
        return account, f"{self.gateway.url}/v1/{account}/g"

    def admin(self) -> Any:
        return self.operator.admin()

    def credits(self, account: str) -> dict[str, Any]:
        return self.operator.credits(account)

    def rule(self, account: str, **spec: Any) -> dict[str, Any]:
        return self.operator.rule(account, **spec)

    async def raw(self, method: str, target: str, headers: dict[str, str] | None = None,
                  body: bytes = b"") -> tuple[int, bytes]:
        """One HTTP/1.1 request with the request target sent byte for byte (clients normalise `..` away)."""
        parts = urlsplit(self.gateway.url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        lines = [f"{method} {target} HTTP/1.1", f"host: {parts.netloc}", "connection: close",
                 f"content-length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        data = await reader.read()
        writer.close()
        head, _, payload = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), payload


@pytest.fixture(scope="package")
def hostile(database_url: str) -> Iterator[HostileStack]:
    fakes = start_provider_fakes()
    settings = Settings(database_url=database_url, admin_token=ADMIN, providers=fakes.providers, db_pool_max=8,
                        max_body_bytes=MAX_BODY)
    gateway = FakeServer(create_app(settings, background=True), lifespan="on").start()
    try:
        yield HostileStack(gateway, fakes.servers, fakes.apps)
    finally:
        gateway.stop()
        fakes.stop()


async def log_rows(db: Database, account: str, expected: int, within: float = 10.0) -> list[Any]:
    """The account's log rows once `expected` of them were written (the writer batches)."""
    rows: list[Any] = await eventually(
        lambda: db.pool.fetch("SELECT * FROM request_logs WHERE account_id = $1 ORDER BY created_at", account),
        until=lambda rows: len(rows) >= expected, within=within, what=f"{expected} log rows")
    return rows
