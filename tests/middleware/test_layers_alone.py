"""GatewayAuth and ZeroDataRetention each alone in front of a tiny ASGI app."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from gateway.db import Database
from gateway.exchange import Exchange
from gateway.gateways import GatewaySettings, GatewayStore
from gateway.middleware.gateway_auth import GatewayAuth
from gateway.middleware.zdr import ZeroDataRetention
from gateway.tokens import TokenStore, new_gateway_token, token_digest


async def tiny(scope: Any, receive: Any, send: Any) -> None:
    ex = Exchange.of(scope)
    body = f'{{"authenticated": {str(ex.authenticated).lower()}, "zdr": {str(ex.zdr_requested).lower()}}}'.encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def get(app: Any, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        return await client.get(path, headers=headers or {})


async def test_gateway_auth_alone(db: Database) -> None:
    account = f"a-{uuid.uuid4().hex[:8]}"
    token = new_gateway_token()
    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", account)
    await db.pool.execute(
        "INSERT INTO gateways (account_id, id, settings) VALUES ($1, 'locked', $2), ($1, 'open', '{}')",
        account, GatewaySettings(authentication=True).to_json())
    await db.pool.execute("INSERT INTO gateway_tokens (account_id, gateway_id, name, token_sha256) "
                          "VALUES ($1, 'locked', 't', $2)", account, token_digest(token))
    gateways = GatewayStore(db)
    app = GatewayAuth(tiny, gateways=gateways, tokens=TokenStore(db, gateways))
    assert (await get(app, f"/{account}/open/openai/x")).json() == {"authenticated": False, "zdr": False}
    assert (await get(app, f"/{account}/locked/openai/x")).status_code == 401
    bad = await get(app, f"/{account}/locked/openai/x", {"cf-aig-authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"]["message"] == "invalid gateway token"
    ok = await get(app, f"/{account}/locked/openai/x", {"cf-aig-authorization": f"Bearer {token}"})
    assert ok.json()["authenticated"] is True


async def test_zdr_alone() -> None:
    app = ZeroDataRetention(tiny)
    assert (await get(app, "/a/g/openai/x")).json()["zdr"] is False
    assert (await get(app, "/a/g/openai/x", {"cf-aig-zdr": "true"})).json()["zdr"] is True
    bad = await get(app, "/a/g/openai/x", {"cf-aig-zdr": "yes"})
    assert bad.status_code == 400 and bad.json()["error"]["header"] == "cf-aig-zdr"
