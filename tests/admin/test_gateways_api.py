from __future__ import annotations

import httpx

from gateway.db import Database


async def test_gateway_crud_and_settings_validation(admin: httpx.AsyncClient, account: str) -> None:
    created = await admin.post(f"/accounts/{account}/gateways", json={"id": "prod", "authentication": True})
    assert created.status_code == 201, created.text
    assert created.json()["result"]["authentication"] is True and created.json()["result"]["collect_logs"] is True
    assert (await admin.post(f"/accounts/{account}/gateways", json={"id": "prod"})).status_code == 409
    bad = await admin.post(f"/accounts/{account}/gateways", json={"id": "x", "zdr": "yes"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "zdr"
    unknown = await admin.patch(f"/accounts/{account}/gateways/prod", json={"colour": "red"})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "colour"
    retention = {"max_rows": 10, "strategy": "DELETE_OLDEST"}
    patched = await admin.patch(f"/accounts/{account}/gateways/prod",
                                json={"byok_only": True, "log_retention": retention})
    assert patched.json()["result"]["byok_only"] is True and patched.json()["result"]["authentication"] is True
    listed = (await admin.get(f"/accounts/{account}/gateways")).json()["result"]
    assert sorted(g["id"] for g in listed) == ["default", "prod"]
    assert (await admin.get(f"/accounts/{account}/gateways/nope")).status_code == 404
    assert (await admin.get("/accounts/nobody/gateways/prod")).status_code == 404
    assert (await admin.delete(f"/accounts/{account}/gateways/prod")).json()["result"]["deleted"] is True
    assert (await admin.get(f"/accounts/{account}/gateways/prod")).status_code == 404


async def test_provider_keys_are_never_returned(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    await admin.post(f"/accounts/{account}/gateways", json={"id": "g"})
    secret = "sk-test-abcdefghijklmnop1234"
    created = await admin.post(f"/accounts/{account}/gateways/g/provider-keys",
                               json={"provider": "openai", "key": secret})
    assert created.status_code == 201 and secret not in created.text
    assert created.json()["result"]["key_last4"] == "1234" and created.json()["result"]["alias"] == "default"
    dup = await admin.post(f"/accounts/{account}/gateways/g/provider-keys", json={"provider": "openai", "key": secret})
    assert dup.status_code == 409
    other = await admin.post(f"/accounts/{account}/gateways/g/provider-keys",
                             json={"provider": "anthropic", "alias": "team-b", "key": "sk-ant-xxxxxxxx9999"})
    assert other.status_code == 201
    bad = await admin.post(f"/accounts/{account}/gateways/g/provider-keys", json={"provider": "nope", "key": "k" * 20})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "provider"
    listed = await admin.get(f"/accounts/{account}/gateways/g/provider-keys")
    assert secret not in listed.text and len(listed.json()["result"]) == 2
    key_id = created.json()["result"]["id"]
    assert (await admin.delete(f"/accounts/{account}/gateways/g/provider-keys/{key_id}")).status_code == 200
    assert (await admin.delete(f"/accounts/{account}/gateways/g/provider-keys/{key_id}")).status_code == 404
    assert (await admin.delete(f"/accounts/{account}/gateways/g/provider-keys/not-a-uuid")).status_code == 404


async def test_custom_providers_and_prices(admin: httpx.AsyncClient, account: str) -> None:
    await admin.post(f"/accounts/{account}/gateways", json={"id": "g"})
    created = await admin.post(f"/accounts/{account}/gateways/g/custom-providers",
                               json={"slug": "vllm", "base_url": "http://10.0.0.5:8000/v1/"})
    assert created.status_code == 201 and created.json()["result"]["base_url"] == "http://10.0.0.5:8000/v1"
    bad = await admin.post(f"/accounts/{account}/gateways/g/custom-providers", json={"slug": "x", "base_url": "ftp://a"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "base_url"
    assert len((await admin.get(f"/accounts/{account}/gateways/g/custom-providers")).json()["result"]) == 1
    prices = await admin.put(f"/accounts/{account}/gateways/g/prices", json={"prices": [
        {"provider": "custom-vllm", "model": "llama", "input_per_mtok": "0.10", "output_per_mtok": "0.20"},
        {"provider": "openai", "model": "gpt-4o", "input_per_mtok": "1", "output_per_mtok": "2",
         "cache_read_per_mtok": "0.5"},
    ]})
    assert prices.status_code == 200, prices.text
    assert prices.json()["result"][0] == {"provider": "custom-vllm", "model": "llama", "input_per_mtok": "0.10",
                                          "output_per_mtok": "0.20", "cache_read_per_mtok": None,
                                          "cache_write_per_mtok": None, "cache_write_1h_per_mtok": None,
                                          "input_audio_per_mtok": None, "output_audio_per_mtok": None,
                                          "web_search_per_k": None}
    bad = await admin.put(f"/accounts/{account}/gateways/g/prices",
                          json={"prices": [{"provider": "openai", "model": "m", "input_per_mtok": 1.5,
                                            "output_per_mtok": "1"}]})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "prices[0].input_per_mtok"
    assert (await admin.delete(f"/accounts/{account}/gateways/g/custom-providers/vllm")).status_code == 200


async def test_every_account_has_its_default_gateway_from_creation(admin: httpx.AsyncClient, account: str,
                                                                   db: Database) -> None:
    """Budgets can be set before the first call: `default` exists as soon as the account does (and is created on
    first use through the admin API for accounts older than that)."""
    assert (await admin.get(f"/accounts/{account}/gateways/default")).status_code == 200
    rule = await admin.post(f"/accounts/{account}/gateways/default/spend-limits",
                            json={"name": "first", "budget_usd": "1", "window": "daily"})
    assert rule.status_code == 201, rule.text
    assert (await admin.post(f"/accounts/{account}/gateways", json={"id": "default"})).status_code == 409
    older = account + "-old"
    assert (await admin.post("/accounts", json={"id": older})).status_code == 201
    await db.pool.execute("DELETE FROM gateways WHERE account_id = $1", older)
    prices = await admin.put(f"/accounts/{older}/gateways/default/prices", json={"prices": []})
    assert prices.status_code == 200, prices.text
    assert (await admin.get("/accounts/nobody/gateways/default")).status_code == 404
