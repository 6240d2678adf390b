from __future__ import annotations

import asyncio
import uuid

import httpx

from gateway.admin.token import AdminTokenCheck, ensure_admin_token, rotate_admin_token
from gateway.db import Database
from gateway.ledger import Ledger
from gateway.ledger.invariants import assert_invariants


async def test_admin_token_is_required(admin: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        response = await admin.get("/accounts", headers={"Authorization": ""} | headers)
        assert response.status_code == 401
        assert response.json()["success"] is False and "admin token" in response.json()["error"]["message"]


async def test_openapi_lists_every_endpoint(admin: httpx.AsyncClient) -> None:
    spec = (await admin.get("/openapi.json", headers={"Authorization": ""})).json()
    assert spec["openapi"].startswith("3.")
    for path, method in [("/admin/accounts", "post"), ("/admin/accounts/{account}/credits/topups", "post"),
                         ("/admin/accounts/{account}/credits/auto-topup", "put"),
                         ("/admin/accounts/{account}/credits/statement", "get"),
                         ("/admin/accounts/{account}/billing/spending-limit", "put")]:
        assert method in spec["paths"][path]


async def test_create_and_list_accounts(admin: httpx.AsyncClient, account: str) -> None:
    again = await admin.post("/accounts", json={"id": account})
    assert again.status_code == 409 and again.json()["error"]["field"] == "id"
    bad = await admin.post("/accounts", json={"id": "Has Spaces"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "id"
    missing = await admin.post("/accounts", json={})
    assert missing.status_code == 422 and missing.json()["error"]["field"] == "id"
    not_json = await admin.post("/accounts", content=b"{nope")
    assert not_json.status_code == 422
    seen, cursor = [], None
    while True:
        page = (await admin.get("/accounts", params={"limit": 2} | ({"cursor": cursor} if cursor else {}))).json()
        seen += [a["id"] for a in page["result"]]
        cursor = page["result_info"]["next_cursor"]
        if cursor is None:
            break
    assert account in seen and len(seen) == len(set(seen))
    assert (await admin.get(f"/accounts/{account}")).json()["result"]["id"] == account
    assert (await admin.get("/accounts/nobody")).status_code == 404


async def test_credits_topups_statement(admin: httpx.AsyncClient, account: str) -> None:
    credits = (await admin.get(f"/accounts/{account}/credits")).json()["result"]
    forecast = credits.pop("forecast")  # tests/analytics/test_forecasts.py checks its figures
    assert forecast["rate_usd_per_day"] == "0.00" and forecast["method"] == "trend-weekday-28d"
    assert credits == {"balance_usd": "0.00", "pending_usd": "0.00", "available_usd": "0.00", "auto_topup": None}
    body = {"amount_usd": "50.00", "idempotency_key": "inv-1"}
    first = await admin.post(f"/accounts/{account}/credits/topups", json=body)
    assert first.status_code == 201 and first.json()["result"]["credits"]["balance_usd"] == "50.00"
    replay = await admin.post(f"/accounts/{account}/credits/topups", json=body)
    assert replay.status_code == 200 and replay.json()["result"]["replayed"] is True
    assert replay.json()["result"]["id"] == first.json()["result"]["id"]
    conflict = await admin.post(f"/accounts/{account}/credits/topups", json={**body, "amount_usd": "5"})
    assert conflict.status_code == 409
    for bad, field in [({"amount_usd": 50.0, "idempotency_key": "k"}, "amount_usd"),
                       ({"amount_usd": "-1", "idempotency_key": "k"}, "amount_usd"),
                       ({"amount_usd": "1.0000000001", "idempotency_key": "k"}, "amount_usd"),
                       ({"amount_usd": "1"}, "idempotency_key")]:
        response = await admin.post(f"/accounts/{account}/credits/topups", json=bad)
        assert response.status_code == 422 and response.json()["error"]["field"] == field, response.text
    await admin.post(f"/accounts/{account}/credits/topups", json={"amount_usd": "0.125", "idempotency_key": "b"})
    rows = (await admin.get(f"/accounts/{account}/credits/statement")).json()["result"]
    assert [(r["code"], r["amount_usd"]) for r in rows] == [("topup", "50.00"), ("topup", "0.125")]
    page = (await admin.get(f"/accounts/{account}/credits/statement", params={"limit": 1})).json()
    assert len(page["result"]) == 1 and page["result_info"]["next_cursor"]
    rest = (await admin.get(f"/accounts/{account}/credits/statement",
                            params={"limit": 1, "cursor": page["result_info"]["next_cursor"]})).json()
    assert rest["result"][0]["amount_usd"] == "0.125"
    future = (await admin.get(f"/accounts/{account}/credits/statement", params={"from": "2999-01-01T00:00:00Z"}))
    assert future.json()["result"] == []
    bad_time = await admin.get(f"/accounts/{account}/credits/statement", params={"from": "yesterday"})
    assert bad_time.status_code == 422 and bad_time.json()["error"]["field"] == "from"
    assert (await admin.get("/accounts/nobody/credits")).status_code == 404


async def test_auto_topup_and_spending_limit_endpoints(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    put = await admin.put(f"/accounts/{account}/credits/auto-topup",
                          json={"threshold_usd": "10.00", "amount_usd": "50.00"})
    assert put.json()["result"]["auto_topup"] == {"threshold_usd": "10.00", "amount_usd": "50.00"}
    bad = await admin.put(f"/accounts/{account}/credits/auto-topup", json={"threshold_usd": "10.00"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "amount_usd"
    assert (await admin.delete(f"/accounts/{account}/credits/auto-topup")).json()["result"]["auto_topup"] is None

    assert (await admin.get(f"/accounts/{account}/billing/spending-limit")).json()["result"] is None
    for strategy in ("rolling", "sliding"):  # `sliding`, the former name, is read as `rolling`
        limit = await admin.put(f"/accounts/{account}/billing/spending-limit",
                                json={"amount_usd": "100", "duration": "weekly", "strategy": strategy})
        assert limit.json()["result"] == {"amount_usd": "100.00", "duration": "weekly", "strategy": "rolling",
                                          "spent_usd": "0.00", "pending_usd": "0.00", "remaining_usd": "100.00",
                                          "forecast": {"rate_usd_per_day": "0.00", "exhausted_at": None,
                                                       "method": "trend-weekday-28d"}}
        shown = await admin.get(f"/accounts/{account}/billing/spending-limit")
        assert shown.json()["result"]["strategy"] == "rolling"
        assert await db.pool.fetchval("SELECT spend_limit_strategy FROM ledger.accounts WHERE code = 'credits' "
                                      "AND owner = $1", account) == "rolling"
    unknown = await admin.put(f"/accounts/{account}/billing/spending-limit",
                              json={"amount_usd": "100", "duration": "weekly", "strategy": "sideways"})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "strategy"
    spec = (await admin.get("/openapi.json")).json()
    body = spec["paths"]["/admin/accounts/{account}/billing/spending-limit"]["put"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["properties"]["strategy"]["enum"] == [
        "fixed", "rolling", "sliding"]
    wrong = await admin.put(f"/accounts/{account}/billing/spending-limit",
                            json={"amount_usd": "100", "duration": "hourly"})
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "duration"
    assert (await admin.delete(f"/accounts/{account}/billing/spending-limit")).status_code == 200
    assert (await admin.get(f"/accounts/{account}/billing/spending-limit")).json()["result"] is None
    await assert_invariants(db)


async def test_generated_admin_token_is_stored_hashed_and_shown_once(db: Database) -> None:
    await db.pool.execute("DELETE FROM admin_tokens")
    results = await asyncio.gather(*(ensure_admin_token(db, None, announce=False) for _ in range(5)))
    tokens = [t for t in results if t]
    assert len(tokens) == 1  # several instances starting together: one generates it
    stored = await db.pool.fetchval("SELECT token_sha256 FROM admin_tokens")
    assert tokens[0] not in stored and len(stored) == 64
    check = AdminTokenCheck(db, None, cache_seconds=0)
    assert await check(tokens[0]) and not await check("nope") and not await check(None)
    assert await ensure_admin_token(db, None, announce=False) is None
    rotated = await rotate_admin_token(db)
    assert await check(rotated) and not await check(tokens[0])
    assert await AdminTokenCheck(db, "configured")("configured")


async def test_unified_usage_shows_in_statement_as_negative(admin: httpx.AsyncClient, account: str,
                                                            db: Database) -> None:
    await admin.post(f"/accounts/{account}/credits/topups", json={"amount_usd": "1", "idempotency_key": "x"})
    ledger = Ledger(db)
    from datetime import UTC, datetime, timedelta
    hid = uuid.uuid4()
    await ledger.hold(hid, account, 10**8, datetime.now(UTC) + timedelta(minutes=1), request_id="req-9")
    credits = (await admin.get(f"/accounts/{account}/credits")).json()["result"]
    assert credits["pending_usd"] == "0.10" and credits["available_usd"] == "0.90"
    await ledger.settle(hid, 25_000_000)
    rows = (await admin.get(f"/accounts/{account}/credits/statement")).json()["result"]
    assert rows[-1] == {**rows[-1], "code": "usage", "amount_usd": "-0.025", "request_id": "req-9"}
