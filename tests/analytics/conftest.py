from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.db import Database
from gateway.logs.schema import COLUMNS
from gateway.logs.writer import LogWriter
from gateway.settings import Settings

ADMIN_TOKEN = "analytics-admin-token"
NOW = datetime(2026, 11, 18, 15, 37, 12, tzinfo=UTC)  # a Wednesday


class Clock:
    """The app's notion of now, moved by the test."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
async def app(db: Database) -> AsyncIterator[Any]:
    application = create_app(Settings(database_url=db.url, admin_token=ADMIN_TOKEN), db=db, background=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def clock(app: Any) -> AsyncIterator[Clock]:
    clock = Clock()
    app.state.services.clock = clock
    yield clock


@pytest.fixture
async def admin(app: Any, clock: Clock) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw/admin",
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client


@pytest.fixture
async def account(admin: httpx.AsyncClient) -> str:
    name = f"an-{uuid.uuid4().hex[:10]}"
    assert (await admin.post("/accounts", json={"id": name})).status_code == 201
    assert (await admin.post(f"/accounts/{name}/gateways", json={"id": "prod"})).status_code == 201
    return name


def log_row(account: str, gateway: str, at: datetime, *, model: str = "gpt-4o-mini", provider: str = "openai",
            cost: str | None = "0.001", user: str | None = None, token: str | None = None,
            groups: list[str] | None = None, metadata: dict[str, Any] | None = None, status: int = 200,
            billing_mode: str = "byok", tokens: tuple[int, int] = (10, 5)) -> dict[str, Any]:
    identity = None
    meta = dict(metadata or {})
    if user or token or groups:
        identity = {"user_id": user, "email": f"{user}@example.com" if user else None, "groups": groups or [],
                    "service_token": token}
        if user:
            meta["cf.user_id"] = user
    row = {"id": uuid.uuid4(), "account_id": account, "gateway_id": gateway, "created_at": at,
            "provider": provider, "model": model, "path": "/v1/chat/completions", "status_code": status,
            "success": 200 <= status < 400, "cached": False, "step": 0, "duration_ms": None, "ttfb_ms": None,
            "tokens_in": tokens[0], "tokens_out": tokens[1], "tokens_cache_read": None, "tokens_cache_write": None,
            "cost_usd": None if cost is None else Decimal(cost), "custom_cost": False, "usage_estimated": False,
            "usage_details": None, "billing_mode": billing_mode, "zdr_applied": False, "zdr_reason": None,
            "identity": identity, "metadata": meta, "request_size": 100, "response_size": 100,
            "error": None if status < 400 else "refused", "request_body": None, "response_body": None}
    return {**{c: None for c in COLUMNS}, **row}


async def write(db: Database, rows: list[dict[str, Any]]) -> None:
    """Through the gateway's own log writer (its triggers keep the rollups)."""
    writer = LogWriter(db)
    for row in rows:
        writer.submit(row, None)
    assert await writer.flush()
    assert writer.dropped == 0 and writer.written == len(rows)
