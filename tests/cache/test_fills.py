"""What gets stored and how it comes back: only complete 2xx answers (never an upstream error, a refusal or a cut
stream), streams replayed byte for byte, one upstream call for concurrent identical misses (one instance, and two
instances sharing the database), the size bound, expiry and the sweeper, purge through the API and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway.cache.store import CacheStore
from gateway.db import Database
from tests.cache.conftest import CHAT, CacheStack, chat, unique
from tests.eventually import eventually

KEY = {"authorization": "Bearer sk-client"}


def money(figures: dict[str, Any]) -> dict[str, Any]:
    """The credits' or a bucket's amounts, without the forecast (its rate is spend over the part of today that has
    passed)."""
    return {k: v for k, v in figures.items() if k != "forecast"}


def status(answer: httpx.Response) -> str | None:
    return answer.headers.get("cf-aig-cache-status")


@pytest.mark.parametrize("fault", [{"x-fake-status": "429", "x-fake-retry-after": "3"}, {"x-fake-status": "500"},
                                   {"x-fake-status": "400"}, {"x-fake-cut-after": "0"}])
def test_errors_are_never_stored(cache_stack: CacheStack, fault: dict[str, str]) -> None:
    _, base = cache_stack.new_gateway(cache_ttl=300)
    body = chat(unique())
    failed = httpx.post(base + CHAT, json=body, headers={**KEY, **fault})
    assert failed.status_code >= 400 and status(failed) == "MISS"
    # the fake's fault headers are not part of the call: the same call again is a miss, then a hit
    answers = [httpx.post(base + CHAT, json=body, headers=KEY) for _ in range(2)]
    assert [(a.status_code, status(a)) for a in answers] == [(200, "MISS"), (200, "HIT")]
    assert cache_stack.calls() == 2


def test_a_refusal_is_never_stored(cache_stack: CacheStack) -> None:
    _, base = cache_stack.new_gateway(cache_ttl=300, credits_usd="0.01")  # unified billing: $0.01 of credit
    body = chat(unique(), max_tokens=1000)  # worst case $1: refused (402) before anything goes upstream
    refused = [httpx.post(base + CHAT, json=body) for _ in range(2)]
    assert [a.status_code for a in refused] == [402, 402] and cache_stack.calls() == 0


def test_cut_streams_are_never_stored_and_whole_ones_replay_byte_for_byte(cache_stack: CacheStack) -> None:
    _, base = cache_stack.new_gateway(cache_ttl=300)
    body = chat(unique(), stream=True)

    def stream(**headers: str) -> tuple[str | None, bytes]:
        with httpx.stream("POST", base + CHAT, json=body, headers={**KEY, **headers}) as answer:
            return status(answer), b"".join(answer.iter_raw())

    cut_status, cut = stream(**{"x-fake-cut-after": "2"})
    assert cut_status == "MISS" and b"[DONE]" not in cut
    miss_status, whole = stream()
    hit_status, replay = stream()
    assert (miss_status, hit_status) == ("MISS", "HIT")
    assert b"[DONE]" in whole and replay == whole
    assert cache_stack.calls() == 2

    # a client that leaves mid-stream leaves nothing stored either
    slow = chat(unique(), stream=True)
    with httpx.stream("POST", base + CHAT, json=slow, headers={**KEY, "x-fake-chunk-delay-ms": "200"}) as answer:
        next(answer.iter_raw())
    again = httpx.post(base + CHAT, json=slow, headers=KEY)
    assert status(again) == "MISS"


def test_sdk_streams_replay_the_same_events(cache_stack: CacheStack) -> None:
    _, base = cache_stack.new_gateway(cache_ttl=300)
    client = openai.OpenAI(base_url=base + "/openai", api_key="sk-client")
    body = chat(unique(), stream=True, stream_options={"include_usage": True})
    runs = [[c.model_dump() for c in client.chat.completions.create(**body)] for _ in range(2)]
    assert runs[0] == runs[1] and runs[0][-1]["usage"] is not None
    claude = anthropic.Anthropic(base_url=base + "/anthropic", api_key="sk-ant-client")
    prompt = unique()
    texts = []
    for _ in range(2):
        with claude.messages.stream(model="claude-haiku-4-5", max_tokens=20,
                                    messages=[{"role": "user", "content": prompt}]) as events:
            texts.append(events.get_final_text())
    assert texts[0] == texts[1] and cache_stack.calls() == 1 and cache_stack.calls("anthropic") == 1


def _burst(urls: list[str], body: dict[str, object], headers: dict[str, str]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(lambda url: httpx.post(url, json=body, headers=headers, timeout=60), urls))


def test_fifty_concurrent_identical_misses_make_one_upstream_call(cache_stack: CacheStack) -> None:
    _, base = cache_stack.new_gateway(cache_ttl=300)
    body = chat(unique())
    answers = _burst([base + CHAT] * 50, body, {**KEY, "x-fake-delay-ms": "300"})
    assert {a.status_code for a in answers} == {200}
    assert sorted(status(a) or "" for a in answers) == ["HIT"] * 49 + ["MISS"]
    assert len({json.dumps(a.json(), sort_keys=True) for a in answers}) == 1
    assert cache_stack.calls() == 1


def test_two_instances_sharing_the_database_make_one_upstream_call_too(cache_stack: CacheStack) -> None:
    account, base_a = cache_stack.new_gateway(cache_ttl=300)
    base_b = f"{cache_stack.b.url}/v1/{account}/g"
    body = chat(unique())
    answers = _burst([base_a + CHAT, base_b + CHAT] * 25, body, {**KEY, "x-fake-delay-ms": "300"})
    assert {a.status_code for a in answers} == {200}
    assert sorted(status(a) or "" for a in answers) == ["HIT"] * 49 + ["MISS"]
    assert cache_stack.calls() == 1


async def test_a_fill_longer_than_the_lease_keeps_its_claim_and_is_stored(cache_stack: CacheStack,
                                                                          db: Database) -> None:
    """The claim lasts a lease (0.6 s here) and the filling instance renews it while the answer is coming: a
    stream of 1.5 s still holds the key when a lease has passed (no other instance may claim it and call the
    provider again), and its answer is stored."""
    account, base = cache_stack.new_gateway(cache_ttl=300)
    stores = [server.app.state.services.running.cache for server in (cache_stack.a, cache_stack.b)]
    for store in stores:
        store.lease = timedelta(seconds=0.6)
    try:
        body = chat(unique(), stream=True)
        headers = {**KEY, "x-fake-chunk-delay-ms": "300"}
        answer = asyncio.create_task(asyncio.to_thread(httpx.post, base + CHAT, json=body, headers=headers,
                                                       timeout=30))
        await asyncio.sleep(1.2)
        assert not answer.done()  # still streaming, two leases after the claim
        claim = await db.pool.fetchrow("SELECT ready, expires_at > now() AS live FROM cache.entries "
                                       "WHERE account_id = $1", account)
        assert claim is not None and not claim["ready"] and claim["live"]
        first = await answer
        assert first.status_code == 200 and status(first) == "MISS"
        await eventually(lambda: db.pool.fetchval("SELECT ready FROM cache.entries WHERE account_id = $1", account),
                         until=lambda ready: ready is True, what="the answer stored under the renewed claim")
        again = await asyncio.to_thread(httpx.post, base + CHAT, json=body, headers=headers, timeout=30)
        assert status(again) == "HIT" and again.content == first.content
        assert cache_stack.calls() == 1
    finally:
        for store in stores:
            store.lease = timedelta(seconds=60)


def test_when_the_leader_fails_the_waiting_requests_are_served_on_their_own(cache_stack: CacheStack) -> None:
    _, base = cache_stack.new_gateway(cache_ttl=300)
    body = chat(unique())
    # every request with this key fails once at the fake: the leader gets a 503, the others their own answers
    headers = {**KEY, "x-fake-delay-ms": "200", "x-fake-fail-times": "1", "x-fake-key": "sk-client"}
    answers = _burst([base + CHAT] * 5, body, headers)
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 200, 503]
    assert {status(a) for a in answers} == {"MISS"}  # the failure was not handed to anyone else
    assert cache_stack.calls() == 5


async def test_hits_are_logged_cached_at_no_cost_and_reserve_nothing(cache_stack: CacheStack, db: Database) -> None:
    account, base = cache_stack.new_gateway(cache_ttl=300, credits_usd="5")
    rule = cache_stack.operator.rule(account, name="all", budget_usd="1.00", window="daily")
    body = chat(unique())
    async with httpx.AsyncClient(base_url=base, timeout=30) as plain:  # no key: unified billing
        miss = await plain.post(CHAT, json=body)
        await asyncio.to_thread(cache_stack.settled)
        buckets = [money(b) for b in await asyncio.to_thread(cache_stack.operator.buckets, account, rule["id"])]
        credits = money(await asyncio.to_thread(cache_stack.operator.credits, account))
        hit = await plain.post(CHAT, json=body)
    assert (status(miss), status(hit)) == ("MISS", "HIT")
    # nothing reserved, held or billed for the hit: the buckets and the balance are where the miss left them
    assert [money(b) for b in await asyncio.to_thread(cache_stack.operator.buckets, account, rule["id"])] == buckets
    assert money(await asyncio.to_thread(cache_stack.operator.credits, account)) == credits
    assert await db.pool.fetchval("SELECT count(*) FROM ledger.transfers WHERE request_id = $1",
                                  hit.headers["cf-aig-log-id"]) == 0
    assert await db.pool.fetchval("SELECT count(*) FROM ledger.transfers WHERE request_id = $1",
                                  miss.headers["cf-aig-log-id"]) >= 1
    rows = await asyncio.to_thread(cache_stack.logs, account, 2)
    by_id = {row["id"]: row for row in rows}
    hit_row, miss_row = by_id[hit.headers["cf-aig-log-id"]], by_id[miss.headers["cf-aig-log-id"]]
    assert (hit_row["cached"], hit_row["cost_usd"], hit_row["status_code"]) == (True, "0", 200)
    assert (miss_row["cached"], miss_row["cost_usd"]) == (False, miss.headers["cf-aig-cost"])
    assert hit_row["billing_mode"] == "unified" and hit_row["tokens_out"] is None


async def test_cache_hit_charge_is_posted_through_the_ledger(cache_stack: CacheStack, db: Database) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        account, base = cache_stack.new_gateway(cache_ttl=300, credits_usd="5", cache_hit_charge="0.5")
        body = chat(unique())
        async with httpx.AsyncClient(base_url=base, timeout=30) as plain:
            miss, hit = await plain.post(CHAT, json=body), await plain.post(CHAT, json=body)
        assert (status(miss), status(hit)) == ("MISS", "HIT")
        cost_nano = round(float(miss.headers["cf-aig-cost"]) * 1e9)
        assert cost_nano > 0
        await asyncio.to_thread(cache_stack.settled)
        charge = await eventually(lambda: db.pool.fetchrow(
            "SELECT amount, code, kind FROM ledger.transfers WHERE request_id = $1", hit.headers["cf-aig-log-id"]))
        assert (charge["amount"], charge["code"], charge["kind"]) == ((cost_nano + 1) // 2, "usage", "single")
        with cache_stack.admin() as admin:
            statement = admin.get(f"/accounts/{account}/credits/statement").json()["result"]
        assert hit.headers["cf-aig-log-id"] in {row["request_id"] for row in statement}
        # BYOK hits are never charged: the provider key is the client's
        byok = await http.post(base + CHAT, json=body, headers=KEY)
        assert status(byok) == "MISS"  # a client key is its own scope
        again = await http.post(base + CHAT, json=body, headers=KEY)
        assert status(again) == "HIT"
        assert await db.pool.fetchval("SELECT count(*) FROM ledger.transfers WHERE request_id = $1",
                                      again.headers["cf-aig-log-id"]) == 0


async def test_the_size_bound_evicts_the_oldest(cache_stack: CacheStack, db: Database) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        account, base = cache_stack.new_gateway(cache_ttl=300, cache_max_mb=1)
        big = {**KEY, "x-fake-output-bytes": "300000"}  # about 300 kB per answer: the fourth pushes the first out
        bodies = [chat(unique()) for _ in range(4)]
        for body in bodies:
            assert status(await http.post(base + CHAT, json=body, headers=big)) == "MISS"
        # an answer is stored just after it went out: wait for the fourth (and the eviction it makes)
        await eventually(lambda: db.pool.fetchval("SELECT bool_and(ready) FROM cache.entries WHERE account_id = $1",
                                                  account))
        count, size = await CacheStore(db).usage(account, "g")
        assert count == 3 and 900_000 < size <= 1024 * 1024
        assert status(await http.post(base + CHAT, json=bodies[-1], headers=big)) == "HIT"
        assert status(await http.post(base + CHAT, json=bodies[0], headers=big)) == "MISS"
        # an answer larger than the whole bound is served, never stored
        huge, padded = chat(unique()), {**KEY, "x-fake-output-bytes": "1200000"}
        for _ in range(2):
            assert status(await http.post(base + CHAT, json=huge, headers=padded)) == "MISS"


async def test_expired_entries_miss_and_the_sweeper_deletes_them(cache_stack: CacheStack, db: Database) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        account, base = cache_stack.new_gateway(cache_ttl=300)
        body = chat(unique())
        short = {**KEY, "cf-aig-cache-ttl": "1"}
        assert [status(await http.post(base + CHAT, json=body, headers=short)) for _ in range(2)] == ["MISS", "HIT"]
        store = CacheStore(db)
        # the instance's sweeper (every 0.2 s here) deletes the entry once it expired; until then it is a hit
        await eventually(lambda: store.usage(account, "g"), until=lambda usage: usage == (0, 0), within=15)
        assert status(await http.post(base + CHAT, json=body, headers=KEY)) == "MISS"
        # and the sweep takes what is due at any time it is given
        await eventually(lambda: store.usage(account, "g"), until=lambda usage: usage[0] == 1)
        assert await store.sweep(now=datetime.now(UTC) + timedelta(days=31)) >= 1
        assert await store.usage(account, "g") == (0, 0)


async def test_purge_through_the_api_and_the_cli(cache_stack: CacheStack, db: Database) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        account, base = cache_stack.new_gateway(cache_ttl=300)
        other = cache_stack.add_gateway(account, "kept", cache_ttl=300)
        bodies = [chat(unique()) for _ in range(2)]
        for body in bodies:
            for url in (base, other):
                assert status(await http.post(url + CHAT, json=body, headers=KEY)) == "MISS"
        with cache_stack.admin() as admin:
            purged = admin.delete(f"/accounts/{account}/gateways/g/cache")
            assert purged.status_code == 200 and purged.json()["result"] == {"gateway": "g", "purged": 2}
            assert admin.delete(f"/accounts/{account}/gateways/nope/cache").status_code == 404
            assert "/admin/accounts/{account}/gateways/{gateway}/cache" in admin.get("/openapi.json").json()["paths"]
        assert status(await http.post(base + CHAT, json=bodies[0], headers=KEY)) == "MISS"
        # the other gateway kept its own
        assert status(await http.post(other + CHAT, json=bodies[0], headers=KEY)) == "HIT"

        # the operator's command, in a process of its own as an operator runs it
        command = [str(Path(sys.executable).parent / "spendgate"), "cache", "purge", account, "kept", "-q"]
        done = await asyncio.to_thread(subprocess.run, command,
                                       env={**os.environ, "DATABASE_URL": db.url}, capture_output=True, text=True)
        assert done.returncode == 0 and json.loads(done.stdout) == {"gateway": "kept", "purged": 2}, done.stderr
        assert status(await http.post(other + CHAT, json=bodies[1], headers=KEY)) == "MISS"
