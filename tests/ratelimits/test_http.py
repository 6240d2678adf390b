"""Rate limits through HTTP (the real OpenAI SDK where a client would use one), on a real Postgres, against the fake
providers: windows, scopes, units, headers, the 429, cache hits, refusals logged, the admin API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from tests.eventually import eventually_sync
from tests.ratelimits.conftest import new_gateway, rate_rule_id
from tests.spend.conftest import Clock, SpendStack


def chat(base: str, *, model: str = "gpt-4o-mini", max_tokens: int = 100, output: int | None = None,
         headers: dict[str, str] | None = None, stream: bool = False) -> httpx.Response:
    payload = {"model": model, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": max_tokens,
               "stream": stream}
    usage = {"x-fake-usage": json.dumps({"input": 7, "output": max_tokens if output is None else output})}
    return httpx.post(f"{base}/openai/chat/completions", json=payload, headers={**usage, **(headers or {})},
                      timeout=30)


def ratelimit(answer: httpx.Response) -> tuple[int, int, int]:
    h = answer.headers
    return int(h["x-ratelimit-limit"]), int(h["x-ratelimit-remaining"]), int(h["x-ratelimit-reset"])


async def counted(db: Database, account: str, spec: dict[str, Any]) -> tuple[int, int]:
    """(spent, pending) over every row of the rule's buckets."""
    row = await db.pool.fetchrow("SELECT coalesce(sum(spent), 0)::bigint AS spent, "
                                 "coalesce(sum(pending), 0)::bigint AS pending FROM limits.buckets WHERE rule_id = $1",
                                 rate_rule_id(account, spec))
    return row["spent"], row["pending"]


def test_fixed_interval_with_the_sdk_headers_429_and_reset(spend_stack: SpendStack, clock: Clock) -> None:
    _, base = new_gateway(spend_stack, {"name": "per-minute", "limit": 3, "interval_s": 60})
    clock.advance(seconds=20)  # 20 s into a whole minute (the clock starts at 12:00:00)
    client = openai.OpenAI(base_url=f"{base}/openai", api_key="unused", max_retries=0)
    for left in (2, 1, 0):
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
        assert raw.http_response.status_code == 200
        assert (raw.headers["x-ratelimit-limit"], raw.headers["x-ratelimit-remaining"],
                raw.headers["x-ratelimit-reset"]) == ("3", str(left), "40")
        spend_stack.settled()
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=10)
    answer = refused.value.response
    assert answer.json() == {"success": False, "error": {
        "message": "Rate limit exceeded", "rule": "per-minute", "unit": "requests", "limit": 3,
        "resets_at": (clock.now + timedelta(seconds=40)).isoformat()}}
    assert answer.headers["retry-after"] == "40"
    assert ratelimit(answer) == (3, 0, 40)
    assert len(spend_stack.recorder("openai").requests) >= 3
    clock.advance(seconds=40)  # the next minute: a new interval
    assert chat(base).status_code == 200


def test_sliding_interval_ages_out_by_slices(spend_stack: SpendStack, clock: Clock) -> None:
    _, base = new_gateway(spend_stack, {"name": "sliding", "limit": 2, "interval_s": 10, "technique": "sliding"})
    assert chat(base).status_code == 200  # 12:00:00, slice [0 s, 1 s)
    spend_stack.settled()
    clock.advance(seconds=5)
    assert chat(base).status_code == 200  # slice [5 s, 6 s)
    spend_stack.settled()
    clock.advance(seconds=4.5)  # 9.5 s: both still in the last 10 s
    refused = chat(base)
    assert refused.status_code == 429
    # the first request's slice stops counting once its end (1 s) is 10 s old: at 11 s, 1.5 s from now
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["resets_at"] == (clock.now + timedelta(seconds=1.5)).isoformat()
    clock.advance(seconds=1)  # 10.5 s: the slice [0, 1) still overlaps the window (0.5 s, 10.5 s]: never early
    assert chat(base).status_code == 429
    clock.advance(seconds=0.5)  # 11 s: it has left
    assert chat(base).status_code == 200
    spend_stack.settled()
    assert chat(base).status_code == 429  # the second (5 s) and the third (11 s)


def test_split_and_equals_scopes(spend_stack: SpendStack, clock: Clock) -> None:
    _, base = new_gateway(
        spend_stack,
        {"name": "per-user", "limit": 1, "interval_s": 60, "scope": {"metadata.user": {"split": True}}},
        {"name": "gpt-4o only", "limit": 1, "interval_s": 60,
         "scope": {"model": {"equals": "openai/gpt-4o"}}})

    def as_user(user: str, model: str = "gpt-4o-mini") -> int:
        status = chat(base, model=model, headers={"cf-aig-metadata": json.dumps({"user": user})}).status_code
        spend_stack.settled()
        return status

    assert [as_user("a"), as_user("b"), as_user("a"), as_user("b")] == [200, 200, 429, 429]
    assert as_user("c", "gpt-4o") == 200  # per-user c: 1, gpt-4o: 1
    refused = chat(base, model="gpt-4o", headers={"cf-aig-metadata": json.dumps({"user": "d"})})
    assert refused.status_code == 429 and refused.json()["error"]["rule"] == "gpt-4o only"


async def test_tokens_are_reserved_at_the_bound_and_settled_to_the_usage(spend_stack: SpendStack, clock: Clock,
                                                                         db: Database) -> None:
    spec = {"name": "tokens", "limit": 1000, "interval_s": 60, "unit": "tokens"}
    account, base = new_gateway(spend_stack, spec)
    first = chat(base, max_tokens=100, output=40)  # used 7 + 40
    assert first.status_code == 200
    limit, remaining, _ = ratelimit(first)
    bound = limit - remaining  # what was reserved: the input bound plus the output limit
    assert limit == 1000 and bound >= 100 + 1
    spend_stack.settled()
    assert await counted(db, account, spec) == (47, 0)
    second = chat(base, max_tokens=100, output=40)
    assert ratelimit(second)[1] == 1000 - 47 - bound
    spend_stack.settled()
    assert await counted(db, account, spec) == (94, 0)
    # 906 left: a request whose bound does not fit is refused, even if what it would use fits
    refused = chat(base, max_tokens=906, output=1)
    assert refused.status_code == 429 and refused.json()["error"]["unit"] == "tokens"
    assert ratelimit(refused)[1] == 906
    # a stream's usage settles it too
    stream = chat(base, max_tokens=50, output=3, stream=True)
    assert stream.status_code == 200 and "[DONE]" in stream.text
    spend_stack.settled()
    assert await counted(db, account, spec) == (104, 0)
    await assert_all_invariants(db)


def test_headers_describe_the_tightest_rule(spend_stack: SpendStack, clock: Clock) -> None:
    _, base = new_gateway(spend_stack, {"name": "wide", "limit": 100, "interval_s": 60},
                          {"name": "narrow", "limit": 5, "interval_s": 3600},
                          {"name": "other model", "limit": 1, "interval_s": 60,
                           "scope": {"model": {"equals": "openai/gpt-4o"}}})
    clock.advance(seconds=30)
    assert ratelimit(chat(base)) == (5, 4, 3570)  # the hour ends at 13:00
    spend_stack.settled()
    unmatched = new_gateway(spend_stack)[1]
    assert "x-ratelimit-limit" not in chat(unmatched).headers


async def test_refused_upstream_still_counts_and_spend_refusal_counts_nothing(
        spend_stack: SpendStack, clock: Clock, db: Database) -> None:
    spec = {"name": "requests", "limit": 10, "interval_s": 60}
    tokens = {"name": "tokens", "limit": 10_000, "interval_s": 60, "unit": "tokens"}
    account, base = new_gateway(spend_stack, spec, tokens)
    spend_stack.rule(account, name="small", budget_usd="0.15", window="daily")  # one $0.10 request fits
    failed = chat(base, headers={"x-fake-status": "500"})
    assert failed.status_code == 500
    spend_stack.settled()
    assert await counted(db, account, spec) == (1, 0)  # it reached the provider: it counts
    assert await counted(db, account, tokens) == (0, 0)  # no answer, no usage: no tokens
    assert chat(base).status_code == 200
    spend_stack.settled()
    assert chat(base).status_code == 429  # the spend rule refuses: nothing of it is kept, in any bucket
    spend_stack.settled()
    assert await counted(db, account, spec) == (2, 0)
    assert await counted(db, account, tokens) == (107, 0)


def test_the_refusal_is_logged(spend_stack: SpendStack, clock: Clock) -> None:
    account, base = new_gateway(spend_stack, {"name": "one", "limit": 1, "interval_s": 60})
    assert chat(base).status_code == 200
    spend_stack.settled()
    refused = chat(base)
    assert refused.status_code == 429

    def rows() -> list[dict[str, Any]]:
        with spend_stack.admin() as admin:
            return admin.get(f"/accounts/{account}/gateways/g/logs").json()["result"]  # type: ignore[no-any-return]

    logged = eventually_sync(rows, until=lambda r: len(r) >= 2, what="two log rows")
    row = next(r for r in logged if r["id"] == refused.headers["cf-aig-log-id"])
    assert (row["status_code"], row["success"], row["error"]) == (429, False, "Rate limit exceeded")
    with spend_stack.admin() as admin:
        only = admin.get(f"/accounts/{account}/gateways/g/logs", params={"status_code": 429}).json()["result"]
    assert [r["id"] for r in only] == [row["id"]]


async def test_a_cache_hit_counts_as_a_request_not_as_tokens(spend_stack: SpendStack, clock: Clock,
                                                             db: Database) -> None:
    requests = {"name": "requests", "limit": 2, "interval_s": 60}
    tokens = {"name": "tokens", "limit": 10_000, "interval_s": 60, "unit": "tokens"}
    account, base = new_gateway(spend_stack, requests, tokens, cache_ttl=600)
    before = len(spend_stack.recorder("openai").requests)
    miss = chat(base, max_tokens=20)
    assert (miss.status_code, miss.headers["cf-aig-cache-status"]) == (200, "MISS")
    spend_stack.settled()
    hit = chat(base, max_tokens=20)
    assert (hit.status_code, hit.headers["cf-aig-cache-status"]) == (200, "HIT")
    assert ratelimit(hit)[:2] == (2, 0)
    spend_stack.settled()
    assert await counted(db, account, requests) == (2, 0)
    assert await counted(db, account, tokens) == (27, 0)  # the miss's 7 + 20; the hit generated nothing
    refused = chat(base, max_tokens=20)
    assert refused.status_code == 429 and "cf-aig-cache-status" not in refused.headers
    assert len(spend_stack.recorder("openai").requests) == before + 1


def test_the_admin_api_validates_the_setting(spend_stack: SpendStack) -> None:
    account, _ = new_gateway(spend_stack)
    path = f"/accounts/{account}/gateways/g"
    good = {"name": "n", "limit": 5, "interval_s": 60}
    cases = [
        ({"rate_limits": {"name": "n"}}, "rate_limits"),
        ({"rate_limits": [{**good, "limit": 0}]}, "rate_limits[0].limit"),
        ({"rate_limits": [good, {**good, "limit": True, "name": "m"}]}, "rate_limits[1].limit"),
        ({"rate_limits": [{**good, "interval_s": 1.5}]}, "rate_limits[0].interval_s"),
        ({"rate_limits": [{**good, "technique": "leaky"}]}, "rate_limits[0].technique"),
        ({"rate_limits": [{**good, "unit": "bytes"}]}, "rate_limits[0].unit"),
        ({"rate_limits": [{**good, "scope": {"colour": {"split": True}}}]}, "rate_limits[0].scope.colour"),
        ({"rate_limits": [{**good, "burst": 3}]}, "rate_limits[0].burst"),
        ({"rate_limits": [good, good]}, "rate_limits[1].name"),
        ({"rate_limits": [{**good, "name": "a\nb"}]}, "rate_limits[0].name"),
        ({"rate_limits": [{**good, "limit": 10**16}]}, "rate_limits[0].limit"),
    ]
    with spend_stack.admin() as admin:
        for body, named in cases:
            answer = admin.patch(path, json=body)
            assert (answer.status_code, answer.json()["error"].get("field")) == (422, named), body
        answer = admin.patch(path, json={"rate_limits": [good]})
        assert answer.status_code == 200
        assert answer.json()["result"]["rate_limits"] == [
            {**good, "technique": "fixed", "unit": "requests", "scope": {}}]
        schema = admin.get("/openapi.json").json()
    texts = json.dumps(schema)
    assert '"interval_s"' in texts and '"sliding"' in texts and '"tokens"' in texts


def test_the_setting_changes_everywhere_at_once(spend_stack: SpendStack, clock: Clock) -> None:
    account, base = new_gateway(spend_stack, {"name": "n", "limit": 1, "interval_s": 60})
    assert chat(base).status_code == 200
    spend_stack.settled()
    assert chat(base).status_code == 429
    with spend_stack.admin() as admin:  # the limit raised: what was counted stays
        assert admin.patch(f"/accounts/{account}/gateways/g",
                           json={"rate_limits": [{"name": "n", "limit": 2, "interval_s": 60}]}).status_code == 200
    answer = eventually_sync(lambda: chat(base), until=lambda a: a.status_code == 200, what="the new limit")
    assert ratelimit(answer)[:2] == (2, 0)


def test_rule_ids_depend_on_what_is_counted() -> None:
    base = {"name": "n", "limit": 1, "interval_s": 60}
    same = rate_rule_id("a", base) == rate_rule_id("a", {**base, "limit": 9, "scope": {"model": {"split": True}}})
    assert same
    others = {rate_rule_id("a", {**base, **change}) for change in (
        {}, {"unit": "tokens"}, {"interval_s": 61}, {"technique": "sliding"}, {"name": "m"})}
    assert len(others) == 5 and rate_rule_id("b", base) != rate_rule_id("a", base)
    assert isinstance(rate_rule_id("a", base), uuid.UUID)


def test_the_admin_api_shows_what_each_rate_limit_counts(spend_stack: SpendStack, clock: Clock,
                                                         database_url: str) -> None:
    account, base = new_gateway(
        spend_stack,
        {"name": "per-user", "limit": 5, "interval_s": 60, "scope": {"metadata.user": {"split": True}}},
        {"name": "tokens", "limit": 10_000, "interval_s": 60, "technique": "sliding", "unit": "tokens"})
    clock.advance(seconds=20)
    for user in ("a", "a", "b"):
        answer = chat(base, max_tokens=100, output=40, headers={"cf-aig-metadata": json.dumps({"user": user})})
        assert answer.status_code == 200
        spend_stack.settled()
    with spend_stack.operator.admin() as admin:
        shown = admin.get(f"/accounts/{account}/gateways/g/rate-limits")
    assert shown.status_code == 200, shown.text
    per_user, tokens = shown.json()["result"]["rate_limits"]
    assert (per_user["name"], per_user["limit"], per_user["unit"], per_user["technique"]) == (
        "per-user", 5, "requests", "fixed")
    assert [(b["key"], b["counted"], b["pending"], b["remaining"]) for b in per_user["buckets"]] == [
        ({"metadata.user": "a"}, 2, 0, 3), ({"metadata.user": "b"}, 1, 0, 4)]
    minute = clock.now.replace(second=0, microsecond=0)
    assert {b["window_start"] for b in per_user["buckets"]} == {minute.isoformat()}
    assert {b["frees_at"] for b in per_user["buckets"]} == {(minute + timedelta(minutes=1)).isoformat()}
    [counted] = tokens["buckets"]
    assert (counted["key"], counted["counted"], counted["remaining"]) == ({}, 3 * (7 + 40), 10_000 - 3 * 47)
    # a gateway without rate limits, and an unknown one
    with spend_stack.operator.admin() as admin:
        assert admin.get(f"/accounts/{account}/gateways/default/rate-limits").json()["result"] == {"rate_limits": []}
        assert admin.get(f"/accounts/{account}/gateways/nope/rate-limits").status_code == 404
        assert "/admin/accounts/{account}/gateways/{gateway}/rate-limits" in admin.get("/openapi.json").json()["paths"]
    # the operator's command (its clock is the real one: the stack's is days ahead, so it counts nothing yet)
    command = [str(Path(sys.executable).parent / "spendgate"), "gateways", "rate-limits", account, "g"]
    done = subprocess.run(command, env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "per-user" in done.stdout and "tokens" in done.stdout and "10000" in done.stdout
