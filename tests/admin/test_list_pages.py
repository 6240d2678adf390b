"""Every list endpoint of the admin API pages the same way: `?limit=` (1-500) and `?cursor=`, `result_info.
next_cursor` null on the last page, every item exactly once, the same order as one big page, and the same 422s
naming `limit` or `cursor`. The inventory here must match the API's: a list endpoint added without pagination, or
not listed here, fails `test_every_list_endpoint_is_paginated_and_tested`."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from gateway.admin.app import ROUTERS
from gateway.db import Database

BASE = "/accounts/{account}/gateways/default"
GRAPH = {"start": "m", "elements": [{"id": "m", "type": "model", "model": "openai/gpt-4o-mini", "success": "e"},
                                    {"id": "e", "type": "end"}]}
N = 5  # items each test creates: more than the page size of 2


@dataclass(frozen=True)
class Listing:
    path: str  # with {account}
    fill: Callable[[httpx.AsyncClient, str, Database], Awaitable[None]]  # creates N items in the list
    key: Callable[[dict[str, Any]], Any]  # what identifies an item
    whole: bool = True  # the list holds only this account's N items (accounts: every account there is)


async def created(response: Awaitable[httpx.Response]) -> None:
    answer = await response
    assert answer.status_code in (200, 201), answer.text


async def fill_accounts(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    for i in range(N):
        await created(admin.post("/accounts", json={"id": f"{account}-{i}"}))


async def fill_statement(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    for i in range(N):
        await created(admin.post(f"/accounts/{account}/credits/topups",
                                 json={"amount_usd": "1", "idempotency_key": f"k{i}"}))


async def fill_gateways(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    for i in range(N - 1):  # and `default`
        await created(admin.post(f"/accounts/{account}/gateways", json={"id": f"g{i}"}))


async def fill_keys(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    for provider, alias in (("openai", "a"), ("openai", "b"), ("anthropic", "a"), ("groq", "default"),
                            ("custom-x", "a")):
        await created(admin.post(BASE.format(account=account) + "/provider-keys",
                                 json={"provider": provider, "alias": alias, "key": "sk-test-12345678"}))


async def fill_custom(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    for i in range(N):
        await created(admin.post(BASE.format(account=account) + "/custom-providers",
                                 json={"slug": f"c{i}", "base_url": "http://127.0.0.1:9/v1"}))


async def fill_prices(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    prices = [{"provider": provider, "model": model, "input_per_mtok": "1", "output_per_mtok": "2"}
              for provider, model in (("*", "m"), ("openai", "a"), ("openai", "b"), ("groq", "a"), ("groq", "m"))]
    await created(admin.put(BASE.format(account=account) + "/prices", json={"prices": prices}))


async def fill_tokens(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    for i in range(N):
        await created(admin.post(BASE.format(account=account) + "/tokens", json={"name": f"t{i}"}))


async def fill_rules(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    for i in range(N):
        await created(admin.post(BASE.format(account=account) + "/spend-limits",
                                 json={"name": f"r{i}", "budget_usd": "1", "window": "daily"}))


async def fill_policies(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    for i in range(N):
        await created(admin.post(BASE.format(account=account) + "/policies",
                                 json={"group": f"g{i}", "models": ["openai/*"]}))


async def fill_routes(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    for i in range(N):
        await created(admin.post(BASE.format(account=account) + "/routes", json={"name": f"r{i}", "graph": GRAPH}))


async def fill_versions(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    await created(admin.post(BASE.format(account=account) + "/routes", json={"name": "r", "graph": GRAPH}))
    for _ in range(N - 1):
        await created(admin.post(BASE.format(account=account) + "/routes/r/versions", json={"graph": GRAPH}))


async def fill_logs(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    # three rows at the same instant: the order (and the cursor) must break the tie by id
    at = datetime.now(UTC).replace(microsecond=0)
    for i in range(N):
        await db.pool.execute(
            "INSERT INTO request_logs (id, account_id, gateway_id, created_at, success) "
            "VALUES ($1, $2, 'default', $3, true)", uuid.uuid4(), account, at if i < 3 else at.replace(second=i))


LISTINGS = {
    "/accounts": Listing("/accounts", fill_accounts, lambda item: item["id"], whole=False),
    "/accounts/{account}/credits/statement": Listing("/accounts/{account}/credits/statement", fill_statement,
                                                     lambda item: item["id"]),
    "/accounts/{account}/gateways": Listing("/accounts/{account}/gateways", fill_gateways, lambda item: item["id"]),
    f"{BASE}/provider-keys": Listing(f"{BASE}/provider-keys", fill_keys, lambda item: item["id"]),
    f"{BASE}/custom-providers": Listing(f"{BASE}/custom-providers", fill_custom, lambda item: item["slug"]),
    f"{BASE}/prices": Listing(f"{BASE}/prices", fill_prices, lambda item: (item["provider"], item["model"])),
    f"{BASE}/tokens": Listing(f"{BASE}/tokens", fill_tokens, lambda item: item["id"]),
    f"{BASE}/spend-limits": Listing(f"{BASE}/spend-limits", fill_rules, lambda item: item["id"]),
    f"{BASE}/policies": Listing(f"{BASE}/policies", fill_policies, lambda item: item["id"]),
    f"{BASE}/routes": Listing(f"{BASE}/routes", fill_routes, lambda item: item["name"]),
    f"{BASE}/routes/r/versions": Listing(f"{BASE}/routes/r/versions", fill_versions, lambda item: item["version"]),
    f"{BASE}/logs": Listing(f"{BASE}/logs", fill_logs, lambda item: item["id"]),
}


async def walk(admin: httpx.AsyncClient, path: str, limit: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        answer = await admin.get(path, params={"limit": limit} | ({"cursor": cursor} if cursor else {}))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"success", "result", "result_info"} and body["success"] is True
        assert len(body["result"]) <= limit
        items += body["result"]
        cursor = body["result_info"]["next_cursor"]
        if cursor is None:
            return items
        assert isinstance(cursor, str) and body["result"]
    raise AssertionError("the pages never end")


@pytest.mark.parametrize("name", list(LISTINGS))
async def test_pages_of_two_hold_every_item_once(admin: httpx.AsyncClient, account: str, db: Database,
                                                 name: str) -> None:
    listing = LISTINGS[name]
    path = listing.path.format(account=account)
    await listing.fill(admin, account, db)
    paged = [listing.key(item) for item in await walk(admin, path, 2)]
    assert len(paged) == len(set(paged)), paged
    whole = [listing.key(item) for item in await walk(admin, path, 500)]
    assert paged == whole  # one order, however it is paged
    if listing.whole:
        assert len(paged) == N
    else:
        assert {f"{account}-{i}" for i in range(N)} <= set(paged)
    # the default page size is 100: one page here
    one = (await admin.get(path)).json()
    assert [listing.key(item) for item in one["result"]] == whole[:100]


@pytest.mark.parametrize("name", list(LISTINGS))
async def test_bad_limits_and_cursors_are_422_naming_the_field(admin: httpx.AsyncClient, account: str,
                                                               db: Database, name: str) -> None:
    listing = LISTINGS[name]
    path = listing.path.format(account=account)
    await listing.fill(admin, account, db)
    real = (await admin.get(path, params={"limit": 1})).json()["result_info"]["next_cursor"]
    assert real is not None
    # this list's own cursor with every part of the wrong type (a string where an int goes, and so on)
    wrong_types = encode([5 if isinstance(part, str) else "x" for part in decode(real)])
    for params, field in (({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "x"}, "limit"),
                          ({"limit": "-1"}, "limit"), ({"limit": ""}, "limit"), ({"cursor": "garbage"}, "cursor"),
                          ({"cursor": encode([1, 2, 3])}, "cursor"), ({"cursor": wrong_types}, "cursor"),
                          ({"cursor": real + "x"}, "cursor")):
        answer = await admin.get(path, params=params)
        body = answer.json()
        assert answer.status_code == 422, (params, answer.text)
        assert body["success"] is False and body["error"]["field"] == field, body
        assert field in body["error"]["message"]


def decode(cursor: str) -> list[Any]:
    decoded: list[Any] = json.loads(base64.urlsafe_b64decode(cursor))
    return decoded


def encode(parts: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode()


async def test_every_list_endpoint_is_paginated_and_tested(admin: httpx.AsyncClient) -> None:
    """A GET that answers a list (a `Page`) is declared paginated, the OpenAPI document describes its `limit`
    and `cursor`, and it is in LISTINGS."""
    lists = {ep.path for router in ROUTERS for ep in router.endpoints
             if ep.method == "GET" and ep.handler.__annotations__.get("return") == "Page"}
    paginated = {ep.path for router in ROUTERS for ep in router.endpoints if ep.paginated}
    assert lists == paginated
    tested = {name.replace("/gateways/default", "/gateways/{gateway}").replace("/routes/r/", "/routes/{name}/")
              for name in LISTINGS}
    assert tested == lists
    spec = (await admin.get("/openapi.json")).json()
    for path in lists:
        operation = spec["paths"]["/admin" + path]["get"]
        params = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
        assert params["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}
        assert params["cursor"]["schema"]["type"] == "string"
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Page"}
    page = spec["components"]["schemas"]["Page"]["properties"]
    assert page["result_info"]["properties"]["next_cursor"]["type"] == ["string", "null"]
