from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.app import create_app
from gateway.db import Database
from gateway.settings import Settings

ADMIN_TOKEN = "test-admin-token"


@pytest.fixture(scope="session")
async def gateway_app(db: Database) -> AsyncIterator[object]:
    app = create_app(Settings(database_url=db.url, admin_token=ADMIN_TOKEN), db=db, background=False)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def admin(gateway_app: object) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway_app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://gw/admin",
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        yield client


@pytest.fixture
async def account(admin: httpx.AsyncClient) -> str:
    name = f"acct-{uuid.uuid4().hex[:10]}"
    response = await admin.post("/accounts", json={"id": name})
    assert response.status_code == 201, response.text
    return name
