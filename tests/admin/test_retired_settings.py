"""`cache_ttl` and `rate_limit` were stored but never applied: migration 0016 removed them from gateways that stored
them, which then load and serve as before. `rate_limit` stays refused as an unknown setting; `cache_ttl` came back
with the response cache that applies it (tests/cache)."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import httpx
import pytest

from gateway.db import migrate
from gateway.gateways import GatewaySettings
from harness.pg import _admin, _with_database

BEFORE = "0015_rolling_spending_limit"


@pytest.mark.parametrize("name, value", [("rate_limit", {"per_minute": 10})])
async def test_the_api_refuses_them(admin: httpx.AsyncClient, account: str, name: str, value: object) -> None:
    response = await admin.patch(f"/accounts/{account}/gateways/default", json={name: value})
    assert response.status_code == 422 and response.json()["error"]["field"] == name
    assert name not in (await admin.get(f"/accounts/{account}/gateways/default")).json()["result"]


async def test_the_migration_removes_them_from_stored_settings(database_url: str) -> None:
    name = f"spendgate_mig_{uuid.uuid4().hex[:8]}"
    await _admin(database_url, f'CREATE DATABASE "{name}"')
    url = _with_database(database_url, name)
    try:
        await asyncio.to_thread(migrate, url, BEFORE)
        stored = {**GatewaySettings().to_json(), "cache_ttl": 300, "rate_limit": {"per_minute": 5},
                  "authentication": True}
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO accounts (id) VALUES ('old')")
            await conn.execute("INSERT INTO gateways (account_id, id, settings) VALUES ('old', 'g', $1::jsonb)",
                               json.dumps(stored))
        finally:
            await conn.close()
        await asyncio.to_thread(migrate, url)
        conn = await asyncpg.connect(url)
        try:
            after = json.loads(await conn.fetchval("SELECT settings::text FROM gateways WHERE id = 'g'"))
        finally:
            await conn.close()
        assert "cache_ttl" not in after and "rate_limit" not in after
        assert GatewaySettings.from_json(after).authentication is True  # the rest is kept, and loads
    finally:
        await _admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
