"""Admin API for spend-limit rules, identity policies and dynamic routes; the matching CLI commands."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest

from gateway.cli import main
from gateway.db import Database

RULE = {"name": "per-user-daily", "budget_usd": "25.00", "window": "daily",
        "scope": {"metadata.user_id": {"split": True}}, "action": "block", "alert_at": [0.5, 0.9]}
GRAPH = {"start": "m", "elements": [{"id": "m", "type": "model", "model": "openai/gpt-4o-mini", "success": "e"},
                                    {"id": "e", "type": "end"}]}


async def gateway(admin: httpx.AsyncClient, account: str) -> str:
    assert (await admin.post(f"/accounts/{account}/gateways", json={"id": "prod"})).status_code == 201
    return f"/accounts/{account}/gateways/prod"


async def test_rules_crud_with_buckets_and_validation(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    base = await gateway(admin, account)
    created = await admin.post(f"{base}/spend-limits", json=RULE)
    assert created.status_code == 201, created.text
    rule = created.json()["result"]
    assert rule["name"] == "per-user-daily" and rule["buckets"] == []
    # a bucket with spend shows up on GET with spent / pending / remaining
    from gateway.limits.reservations import Limits, bucket_lines
    from gateway.limits.rules import parse_rule

    parsed = parse_rule(rule["id"], RULE)
    limits = Limits(db)
    lines = bucket_lines([parsed], {"metadata.user_id": "ada"}, datetime.now(UTC))
    outcome = await limits.reserve(lines, 2_000_000_000)
    await limits.settle(outcome.reservation_id, 1_500_000_000)
    open_one = await limits.reserve(lines, 1_000_000_000)
    listed = (await admin.get(f"{base}/spend-limits")).json()["result"]
    forecast = listed[0]["buckets"][0].pop("forecast")  # tests/analytics/test_forecasts.py checks its figures
    assert set(forecast) == {"rate_usd_per_day", "exhausted_at", "method"}
    assert listed[0]["buckets"] == [{"key": {"metadata.user_id": "ada"}, "window_start": listed[0]["buckets"][0][
        "window_start"], "spent_usd": "1.50", "pending_usd": "1.00", "remaining_usd": "22.50"}]
    await limits.settle(open_one.reservation_id, 0)
    # replace, then delete
    replaced = await admin.put(f"{base}/spend-limits/{rule['id']}", json={**RULE, "budget_usd": "30"})
    assert replaced.status_code == 200 and replaced.json()["result"]["budget_usd"] == "30"
    assert (await admin.get(f"{base}/spend-limits/{rule['id']}")).json()["result"]["budget_usd"] == "30"
    for bad, field in [({**RULE, "window": "hourly"}, "window"), ({**RULE, "budget_usd": "-1"}, "budget_usd"),
                       ({**RULE, "scope": {"colour": {"split": True}}}, "scope.colour"),
                       ({**RULE, "action": {"fallback_model": "nope"}}, "action"), ({**RULE, "extra": 1}, "extra")]:
        answer = await admin.post(f"{base}/spend-limits", json=bad)
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text
    assert (await admin.delete(f"{base}/spend-limits/{rule['id']}")).status_code == 200
    assert (await admin.delete(f"{base}/spend-limits/{rule['id']}")).status_code == 404
    assert (await admin.get(f"{base}/spend-limits/not-a-uuid")).status_code == 404


async def test_at_most_twenty_rules_even_when_created_concurrently(admin: httpx.AsyncClient, account: str) -> None:
    base = await gateway(admin, account)
    answers = await asyncio.gather(*(admin.post(f"{base}/spend-limits", json={**RULE, "name": f"r{i}"})
                                     for i in range(25)))
    assert sorted(a.status_code for a in answers) == [201] * 20 + [409] * 5
    assert len((await admin.get(f"{base}/spend-limits")).json()["result"]) == 20


async def test_policies_and_routes(admin: httpx.AsyncClient, account: str) -> None:
    base = await gateway(admin, account)
    policy = await admin.post(f"{base}/policies", json={"group": "interns", "models": ["groq/*"]})
    assert policy.status_code == 201
    assert (await admin.post(f"{base}/policies", json={"group": "x", "models": "groq/*"})).json()["error"][
        "field"] == "models"
    assert [p["group"] for p in (await admin.get(f"{base}/policies")).json()["result"]] == ["interns"]
    assert (await admin.delete(f"{base}/policies/{policy.json()['result']['id']}")).status_code == 200
    assert (await admin.get(f"{base}/policies")).json()["result"] == []

    route = await admin.post(f"{base}/routes", json={"name": "support", "graph": GRAPH})
    assert route.status_code == 201 and route.json()["result"]["deployed_version"] == 1
    assert (await admin.post(f"{base}/routes", json={"name": "support", "graph": GRAPH})).status_code == 409
    looping = {"start": "a", "elements": [{"id": "a", "type": "model", "model": "openai/x", "success": "a"}]}
    bad = await admin.post(f"{base}/routes", json={"name": "loop", "graph": looping})
    assert bad.status_code == 422 and "loops" in bad.json()["error"]["message"]
    v2 = {**GRAPH, "elements": [{**GRAPH["elements"][0], "model": "groq/llama-3.3-70b-versatile"},
                                GRAPH["elements"][1]]}
    assert (await admin.post(f"{base}/routes/support/versions", json={"graph": v2})).json()["result"]["version"] == 2
    assert (await admin.get(f"{base}/routes/support")).json()["result"]["deployed_version"] == 1
    assert (await admin.post(f"{base}/routes/support/deploy", json={"version": 2})).status_code == 200
    current = (await admin.get(f"{base}/routes/support")).json()["result"]
    assert current["deployed_version"] == 2 and current["graph"]["elements"][0]["model"].startswith("groq/")
    versions = (await admin.get(f"{base}/routes/support/versions")).json()["result"]
    assert [v["deployed"] for v in versions] == [False, True]
    assert (await admin.post(f"{base}/routes/support/deploy", json={"version": 9})).status_code == 404
    assert (await admin.get(f"{base}/routes/nope/versions")).status_code == 404
    spec = (await admin.get("/openapi.json")).json()
    assert "/admin/accounts/{account}/gateways/{gateway}/spend-limits" in spec["paths"]


async def test_cli_limits_policies_routes(db: Database, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", db.url)
    name = f"cli-{uuid.uuid4().hex[:8]}"

    def cli(*argv: str) -> tuple[int, object, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, (json.loads(out) if out.strip() and code == 0 else None), err

    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", name)
    await db.pool.execute("INSERT INTO gateways (account_id, id) VALUES ($1, 'gw')", name)
    code, rule, _ = await asyncio.to_thread(cli, "limits", "create", name, "gw", "--json", json.dumps(RULE))
    assert code == 0 and rule["name"] == "per-user-daily"  # type: ignore[index]
    code, rules, _ = await asyncio.to_thread(cli, "limits", "list", name, "gw", "--json")
    assert [r["id"] for r in rules] == [rule["id"]]  # type: ignore[index, union-attr]
    code, _, err = await asyncio.to_thread(cli, "limits", "create", name, "gw", "--json", '{"name": "x"}')
    assert code == 1 and "budget_usd" in err
    code, _, _ = await asyncio.to_thread(cli, "limits", "delete", name, "gw", rule["id"])  # type: ignore[index]
    assert code == 0
    code, policy, _ = await asyncio.to_thread(cli, "policies", "create", name, "gw", "--json",
                                              '{"group": "g", "models": ["groq/*"]}')
    assert code == 0 and policy["group"] == "g"  # type: ignore[index]
    code, route, _ = await asyncio.to_thread(cli, "routes", "create", name, "gw", "r1", "--json", json.dumps(GRAPH))
    assert code == 0 and route["version"] == 1  # type: ignore[index]
    code, _, _ = await asyncio.to_thread(cli, "routes", "add-version", name, "gw", "r1", "--json", json.dumps(GRAPH))
    code, deployed, _ = await asyncio.to_thread(cli, "routes", "deploy", name, "gw", "r1", "2")
    assert code == 0 and deployed == {"name": "r1", "deployed_version": 2}
