"""RequestLog through the whole app: one row per request (refused ones too), payload switches, retention."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest

from tests.eventually import eventually_sync
from tests.providers.conftest import Stack

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "log me please"}]}


def wait_logs(stack: Stack, account: str, gateway: str = "default", n: int = 1, **params: Any) -> list[dict]:
    with stack.admin() as admin:
        rows: list[dict] = eventually_sync(
            lambda: admin.get(f"/accounts/{account}/gateways/{gateway}/logs", params=params).json()["result"],
            until=lambda rows: len(rows) >= n, what=f"{n} log rows")
    return rows


def test_a_served_request_is_logged_with_usage_cost_and_bodies(stack: Stack) -> None:
    account = stack.new_account()
    client = openai.OpenAI(base_url=stack.base(account) + "/openai", api_key="sk-secret-provider-key-123")
    raw = client.chat.completions.with_raw_response.create(**BODY)
    log_id = raw.headers["cf-aig-log-id"]
    rows = wait_logs(stack, account)
    assert [r["id"] for r in rows] == [log_id]
    row = rows[0]
    usage = raw.parse().usage
    assert row["status_code"] == 200 and row["success"] and row["provider"] == "openai"
    assert row["model"] == "gpt-4o-mini" and row["billing_mode"] == "byok"
    assert (row["tokens_in"], row["tokens_out"]) == (usage.prompt_tokens, usage.completion_tokens)
    assert row["cost_usd"] == raw.headers["cf-aig-cost"]
    assert "log me please" in row["request_body"] and "Hello from fake-openai" in row["response_body"]
    assert row["duration_ms"] >= row["ttfb_ms"] > 0
    with stack.admin() as admin:
        one = admin.get(f"/accounts/{account}/gateways/default/logs/{log_id}").json()["result"]
        assert one["id"] == log_id
        fb = admin.patch(f"/accounts/{account}/gateways/default/logs/{log_id}", json={"feedback": -1})
        assert fb.json()["result"]["feedback"] == -1
        assert admin.patch(f"/accounts/{account}/gateways/default/logs/{log_id}",
                           json={"feedback": 5}).status_code == 422
    # the provider key appears nowhere in the log
    assert "sk-secret-provider-key-123" not in str(rows)


def test_refused_requests_are_logged_and_streams_too(stack: Stack) -> None:
    account = stack.new_account()
    url = stack.base(account) + "/openai/chat/completions"
    bad = httpx.post(url, json=BODY, headers={"cf-aig-max-attempts": "9", "Authorization": "Bearer k"})
    assert bad.status_code == 400
    with httpx.stream("POST", url, json={**BODY, "stream": True}, headers={"Authorization": "Bearer k"}) as r:
        b"".join(r.iter_raw())
    rows = wait_logs(stack, account, n=2)
    assert sorted(r["status_code"] for r in rows) == [200, 400]
    refused = next(r for r in rows if r["status_code"] == 400)
    assert not refused["success"] and "cf-aig-max-attempts" in refused["error"]
    streamed = next(r for r in rows if r["status_code"] == 200)
    assert streamed["tokens_in"] == 3 and streamed["cost_usd"] is not None and "data: " in streamed["response_body"]
    only_errors = wait_logs(stack, account, status_code=400)
    assert len(only_errors) == 1


def test_collect_log_switches_and_payload_off(stack: Stack) -> None:
    account = stack.new_account()
    with stack.admin() as admin:
        admin.post(f"/accounts/{account}/gateways", json={"id": "quiet", "collect_logs": False})
    key = {"Authorization": "Bearer k"}
    r = httpx.post(stack.base(account, "quiet") + "/openai/chat/completions", json=BODY, headers=key)
    assert r.status_code == 200 and "cf-aig-log-id" not in r.headers
    r = httpx.post(stack.base(account, "quiet") + "/openai/chat/completions", json=BODY,
                   headers={**key, "cf-aig-collect-log": "true", "cf-aig-collect-log-payload": "false"})
    rows = wait_logs(stack, account, "quiet")
    assert len(rows) == 1 and rows[0]["request_body"] is None and rows[0]["response_body"] is None
    assert rows[0]["tokens_in"] == 3
    r = httpx.post(stack.base(account) + "/openai/chat/completions", json=BODY,
                   headers={**key, "cf-aig-collect-log": "false"})
    assert "cf-aig-log-id" not in r.headers


@pytest.mark.slow
def test_retention_delete_oldest_and_stop_inserting(stack: Stack) -> None:
    account = stack.new_account()
    with stack.admin() as admin:
        admin.post(f"/accounts/{account}/gateways",
                   json={"id": "keep2", "log_retention": {"max_rows": 2, "strategy": "DELETE_OLDEST"}})
        admin.post(f"/accounts/{account}/gateways",
                   json={"id": "stop2", "log_retention": {"max_rows": 2, "strategy": "STOP_INSERTING"}})
    ids = {}
    for gw in ("keep2", "stop2"):
        ids[gw] = []
        for _ in range(4):
            r = httpx.post(stack.base(account, gw) + "/openai/chat/completions", json=BODY,
                           headers={"Authorization": "Bearer k"})
            ids[gw].append(r.headers["cf-aig-log-id"])
            time.sleep(0.25)  # one batch each
    time.sleep(0.5)
    kept = {r["id"] for r in wait_logs(stack, account, "keep2", n=2)}
    assert kept == set(ids["keep2"][2:])
    stopped = {r["id"] for r in wait_logs(stack, account, "stop2", n=2)}
    assert stopped == set(ids["stop2"][:2])
