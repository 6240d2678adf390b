"""Upstream faults, checked for money too ("Run it like production").

Every request here runs on a gateway with a spend rule and on unified billing with credits, so it both reserves in
a bucket and holds credit. For each fault: what the client sees, and afterwards nothing pending, the right amount
billed (nothing without a 2xx answer; the usage when usage came; the full reservation when a 2xx answer died
without usage, gateway/middleware/spend_plan.py) and the ledger and limit invariants.

Prices (tests/spend/conftest.py): nothing per input token, $0.001 per output token; every request asks for
`max_tokens` 100 (reservation $0.10) and the fake reports 30 output tokens (cost $0.03).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from decimal import Decimal
from typing import Any, cast

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

import gateway.providers.forward as forward
from gateway.app import create_app
from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from gateway.settings import PROVIDERS, ProviderConfig, Settings
from harness.fakes import FakeServer, openai_app
from tests.spend.conftest import ADMIN, SpendStack

RESERVED = Decimal("0.10")  # max_tokens 100 at $0.001
# a stream cut after its role chunk and one delta ("Hello", 5 bytes): estimated at max(1 event, 5 bytes / 4) = 2
# output tokens (gateway/providers/left_early.py), inputs being free here
CUT_ESTIMATE = Decimal("0.002")
COST = Decimal("0.03")  # the 30 output tokens the fake reports
CREDITS = Decimal("10")
USAGE = {"x-fake-usage": json.dumps({"input": 3, "output": 30})}


def payload(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "tell me a story"}], "max_tokens": 100,
            **extra}


def budgeted(stack: SpendStack) -> tuple[str, str, str]:
    """(account, base URL, rule id) of a fresh gateway with $10 of credits and a $5 daily rule."""
    account, base = stack.new_gateway(credits_usd=str(CREDITS))
    rule = stack.rule(account, name="faults", budget_usd="5", window="daily")
    return account, base, str(rule["id"])


async def settled(stack: SpendStack, account: str, rule_id: str, within: float = 5.0) -> tuple[Decimal, Decimal]:
    """Wait (bounded) until nothing is pending in the bucket or the credits; (bucket spent, credits debited)."""
    deadline = time.monotonic() + within
    while True:
        [bucket] = stack.buckets(account, rule_id)
        credits = stack.credits(account)
        if bucket["pending_usd"] == "0.00" and Decimal(credits["pending_usd"]) == 0:
            return Decimal(bucket["spent_usd"]), CREDITS - Decimal(credits["balance_usd"])
        assert time.monotonic() < deadline, f"still pending after {within} s: {bucket}, {credits}"
        await asyncio.sleep(0.05)


def retried(marker: str) -> dict[str, str]:
    """Up to three attempts, and a header that tells this request's attempts apart at the fake."""
    return {"cf-aig-max-attempts": "3", "cf-aig-retry-delay": "10", "x-test-id": marker}


def attempts(stack: SpendStack, marker: str) -> int:
    return sum(1 for r in stack.recorder("openai").requests if r.headers.get("x-test-id") == marker)


# -- 1. connection refused ----------------------------------------------------------------------------------------


@asynccontextmanager
async def unreachable_stack(stack: SpendStack, database_url: str) -> AsyncIterator[SpendStack]:
    """A second gateway on the same database whose providers (and their unified-billing keys) live on a port where
    nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed when the block ends: nothing listens there
    providers = {p: ProviderConfig(p, f"http://127.0.0.1:{dead}/v1", key=f"gw-key-{p}") for p in PROVIDERS}
    settings = Settings(database_url=database_url, admin_token=ADMIN, providers=providers, db_pool_min=1,
                        db_pool_max=4)
    async with FakeServer(create_app(settings, background=False), lifespan="on") as gw:
        yield SpendStack(gw, {}, {}, stack.webhook, stack.idp, settings)


async def test_connection_refused_is_502_after_the_attempts_and_bills_nothing(
        spend_stack: SpendStack, database_url: str, db: Database) -> None:
    async with unreachable_stack(spend_stack, database_url) as dead:
        account, base, rule_id = budgeted(dead)
        async with httpx.AsyncClient(timeout=30) as client:
            timings = {}
            for tries in (1, 3):
                started = time.monotonic()
                r = await client.post(f"{base}/openai/chat/completions", json=payload(), headers={
                    **USAGE, "cf-aig-max-attempts": str(tries), "cf-aig-retry-delay": "500"})
                timings[tries] = time.monotonic() - started
                assert r.status_code == 502, r.text
                error = r.json()["error"]
                assert "openai" in error["message"] and "unreachable" in error["message"]
                assert r.headers["content-type"] == "application/json"
        # three attempts wait out two retry delays of 500 ms; one attempt waits for none
        assert timings[3] >= 1.0 and timings[3] - timings[1] >= 0.9 and timings[3] < 5, timings
        assert await settled(dead, account, rule_id) == (Decimal(0), Decimal(0))
    await assert_all_invariants(db)


# -- 2. connection reset mid-stream -------------------------------------------------------------------------------


async def _stream(client: httpx.AsyncClient, base: str, headers: dict[str, str]) -> tuple[int, list[bytes]]:
    body = payload(stream=True, stream_options={"include_usage": True})
    async with client.stream("POST", f"{base}/openai/chat/completions", json=body,
                             headers={**USAGE, **headers}) as r:
        data = b"".join([chunk async for chunk in r.aiter_raw()])
    return r.status_code, [re.sub(rb'"created": \d+', b"", e) for e in data.split(b"\n\n") if e]


async def last_row(db: Database, account: str, count: int) -> Any:
    """The account's newest log row, once `count` rows were written (the writer batches)."""
    for _ in range(100):
        rows = await db.pool.fetch("SELECT * FROM request_logs WHERE account_id = $1 ORDER BY created_at DESC",
                                   account)
        if len(rows) >= count:
            return rows[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} log rows were not written")


async def test_connection_reset_mid_stream_ends_the_stream_and_settles(spend_stack: SpendStack,
                                                                      db: Database) -> None:
    account, base, rule_id = budgeted(spend_stack)
    async with httpx.AsyncClient(timeout=30) as client:
        status, whole = await _stream(client, base, {})
        assert status == 200 and whole[-1] == b"data: [DONE]" and b'"usage": {' in whole[-2]
        assert await settled(spend_stack, account, rule_id) == (COST, COST)

        # cut before the usage chunk: the stream ends where upstream broke (no [DONE] invented, no retry once
        # bytes went to the client), and what was delivered is billed, estimated, the same number in the log
        marker = uuid.uuid4().hex
        status, cut = await _stream(client, base, {"x-fake-cut-after": "2", **retried(marker)})
        assert status == 200 and cut == whole[:2]
        assert attempts(spend_stack, marker) == 1
        assert await settled(spend_stack, account, rule_id) == (COST + CUT_ESTIMATE, COST + CUT_ESTIMATE)
        row = await last_row(db, account, 2)
        assert row["usage_estimated"] and row["cost_usd"] == CUT_ESTIMATE and row["tokens_out"] == 2

        # cut after the usage chunk (only [DONE] is missing): the usage is billed
        marker = uuid.uuid4().hex
        status, cut = await _stream(client, base, {"x-fake-cut-after": str(len(whole) - 1), **retried(marker)})
        assert status == 200 and cut == whole[:-1]
        assert attempts(spend_stack, marker) == 1
        assert await settled(spend_stack, account, rule_id) == (2 * COST + CUT_ESTIMATE, 2 * COST + CUT_ESTIMATE)
        row = await last_row(db, account, 3)
        assert not row["usage_estimated"] and row["cost_usd"] == COST
    await assert_all_invariants(db)


@pytest.mark.parametrize(("path", "model"), [("openai/chat/completions", "gpt-4o-mini"),
                                           ("compat/chat/completions", "openai/gpt-4o-mini"),
                                           ("compat/chat/completions", "anthropic/claude-haiku-4-5")])
async def test_connection_reset_before_a_json_body_is_502_and_settles(spend_stack: SpendStack, db: Database,
                                                                      path: str, model: str) -> None:
    """x-fake-cut-after 0 on a JSON answer: status line and headers, then the connection drops."""
    account, base, rule_id = budgeted(spend_stack)
    async with httpx.AsyncClient(timeout=30) as client:
        marker = uuid.uuid4().hex
        r = await client.post(f"{base}/{path}", json=payload(model=model),
                              headers={**USAGE, "x-fake-cut-after": "0", **retried(marker)})
    provider = model.split("/")[0] if path.startswith("compat") else "openai"
    assert r.status_code == 502 and r.headers["content-type"] == "application/json", r.text
    assert provider in r.json()["error"]["message"]
    recorded = spend_stack.recorder(provider).requests
    assert sum(1 for q in recorded if q.headers.get("x-test-id") == marker) == 1  # it answered 2xx: no retry
    # the provider answered 200 and billed the prompt: estimated (inputs are free here, and no output was seen),
    # and the log row says so with the same number
    row = await last_row(db, account, 1)
    assert row["usage_estimated"] and row["tokens_in"] > 0 and row["tokens_out"] == 0
    assert await settled(spend_stack, account, rule_id) == (row["cost_usd"], row["cost_usd"]) == (0, 0)
    await assert_all_invariants(db)


# -- 3. a burst of 500s -------------------------------------------------------------------------------------------


async def test_burst_of_500s_retries_and_bills_each_success_once(spend_stack: SpendStack, db: Database) -> None:
    """20 at once; request i fails its first i % 4 attempts with 500; three attempts: 0, 1, 2 failures recover,
    3 failures return the upstream's 500."""
    account, base, rule_id = budgeted(spend_stack)
    run = uuid.uuid4().hex[:8]

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post(f"{base}/openai/chat/completions", json=payload(), headers={
            **USAGE, "x-fake-fail-times": str(i % 4), "x-fake-key": f"{run}-{i}", "x-fake-fail-status": "500",
            "x-test-id": f"{run}-{i}", "cf-aig-max-attempts": "3", "cf-aig-retry-delay": "20"})

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as client:
        answers = await asyncio.gather(*(one(client, i) for i in range(20)))
    for i, r in enumerate(answers):
        if i % 4 < 3:
            assert r.status_code == 200, (i, r.text)
            assert Decimal(r.headers["cf-aig-cost"]) == COST
            assert attempts(spend_stack, f"{run}-{i}") == i % 4 + 1
        else:
            assert r.status_code == 500, (i, r.text)
            assert r.json() == {"error": {"message": "overloaded, try again", "type": "server_error",
                                          "param": None, "code": "500"}}
            assert "cf-aig-cost" not in r.headers
            assert attempts(spend_stack, f"{run}-{i}") == 3
    served = sum(1 for r in answers if r.status_code == 200)
    assert served == 15
    assert await settled(spend_stack, account, rule_id) == (served * COST, served * COST)
    await assert_all_invariants(db)


# -- 4. a hang ----------------------------------------------------------------------------------------------------


async def test_hang_is_504_after_the_attempts_and_bills_nothing(spend_stack: SpendStack, db: Database) -> None:
    account, base, rule_id = budgeted(spend_stack)
    marker = uuid.uuid4().hex
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{base}/openai/chat/completions", json=payload(), headers={
            **USAGE, "x-fake-delay-ms": "60000", "cf-aig-request-timeout": "500", "cf-aig-max-attempts": "2",
            "x-test-id": marker})
    elapsed = time.monotonic() - started
    assert r.status_code == 504 and "openai" in r.json()["error"]["message"], r.text
    assert 1.0 <= elapsed < 2.5, elapsed
    assert attempts(spend_stack, marker) == 2
    assert await settled(spend_stack, account, rule_id) == (Decimal(0), Decimal(0))
    await assert_all_invariants(db)


async def test_hang_without_a_timeout_header_is_bounded_by_the_default(
        spend_stack: SpendStack, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default time to first byte (forward.DEFAULT_FIRST_BYTE_TIMEOUT_S, 300 s) applies without the header;
    shortened here so the test is quick."""
    monkeypatch.setattr(forward, "DEFAULT_FIRST_BYTE_TIMEOUT_S", 0.5)
    account, base, rule_id = budgeted(spend_stack)
    marker = uuid.uuid4().hex
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{base}/openai/chat/completions", json=payload(),
                              headers={**USAGE, "x-fake-delay-ms": "60000", "x-test-id": marker})
    assert r.status_code == 504 and "openai" in r.json()["error"]["message"], r.text
    assert time.monotonic() - started < 2
    assert attempts(spend_stack, marker) == 1
    assert await settled(spend_stack, account, rule_id) == (Decimal(0), Decimal(0))
    await assert_all_invariants(db)


async def test_client_leaving_during_a_hang_releases_the_reservation(spend_stack: SpendStack,
                                                                      db: Database) -> None:
    account, base, rule_id = budgeted(spend_stack)
    marker = uuid.uuid4().hex
    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=0.5)) as client:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes its connection
            await client.post(f"{base}/openai/chat/completions", json=payload(),
                              headers={**USAGE, "x-fake-delay-ms": "60000", "x-test-id": marker})
    assert attempts(spend_stack, marker) == 1
    assert await settled(spend_stack, account, rule_id, within=2) == (Decimal(0), Decimal(0))  # released promptly
    assert (await logged(spend_stack, account))["status_code"] == 499
    await assert_all_invariants(db)


async def logged(stack: SpendStack, account: str, within: float = 5.0) -> dict[str, Any]:
    """The newest log row of the account's gateway, once the log writer wrote it."""
    deadline = time.monotonic() + within
    with stack.admin() as admin:
        while True:
            rows = admin.get(f"/accounts/{account}/gateways/g/logs").json()["result"]
            if rows:
                return rows[0]  # type: ignore[no-any-return]
            assert time.monotonic() < deadline, "no log row"
            await asyncio.sleep(0.1)


# -- 5. a slow client ---------------------------------------------------------------------------------------------


class Counting:
    """An ASGI wrapper that counts the response body bytes its app got past `send` (into the socket's buffers)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sent = 0
        self.done = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body":
                self.sent += len(message.get("body", b""))
                self.done = self.done or not message.get("more_body", False)

        await self.app(scope, receive, counted)


def rss() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def pool_in_use(stack: SpendStack) -> int:
    pool = stack.services.running.db.pool
    return int(pool.get_size() - pool.get_idle_size())


@contextmanager
def grok_upstream(stack: SpendStack, app: Any) -> Iterator[None]:
    """Point the gateway's grok provider (unified-billing key included) at `app` for the test."""
    providers = cast(dict[str, ProviderConfig], stack.settings.providers)
    original = providers["grok"]
    with FakeServer(app) as server:
        providers["grok"] = ProviderConfig("grok", server.url, key="gw-key-grok")
        try:
            yield
        finally:
            providers["grok"] = original


async def test_slow_client_gets_backpressure_no_buffering_no_db_connection(spend_stack: SpendStack,
                                                                          db: Database) -> None:
    """A 64 MiB stream read at about 1 KB/s for 3 s, then the client leaves. While it reads: the upstream is held
    back by TCP backpressure (it got only what the socket buffers on the way hold past `send`, far from the whole
    stream, and stopped there), the process's memory does not grow with the stream, and no database connection is
    held for the request. After it leaves: the gateway stops the upstream and settles what was delivered (more than
    the request's `max_tokens`, so exactly its cost at the limit)."""
    size = 64 * 1024 * 1024
    upstream = Counting(openai_app("/v1"))
    account, base, rule_id = budgeted(spend_stack)
    with grok_upstream(spend_stack, upstream):
        url = httpx.URL(f"{base}/grok/v1/chat/completions")
        body = json.dumps(payload(stream=True)).encode()
        head = (f"POST {url.raw_path.decode()} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"x-fake-output-bytes: {size}\r\nx-fake-usage: {USAGE['x-fake-usage']}\r\n\r\n")
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the client is the bottleneck
        sock.setblocking(False)
        baseline_rss = rss()
        received = b""
        samples: list[tuple[int, int, int]] = []  # (db connections in use, RSS growth, bytes upstream sent)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (url.host, url.port or 80)), 5)
            await loop.sock_sendall(sock, head.encode() + body)
            started = time.monotonic()
            while time.monotonic() - started < 3:
                received += await asyncio.wait_for(loop.sock_recv(sock, 256), 5)
                samples.append((pool_in_use(spend_stack), rss() - baseline_rss, upstream.sent))
                await asyncio.sleep(0.25)
        finally:
            sock.close()  # unread data in the buffer: the kernel resets the connection
        assert received.startswith(b"HTTP/1.1 200 "), received[:100]
        assert 2000 <= len(received) <= 4000
        in_use, growth, sent = zip(*samples, strict=True)
        assert not upstream.done and sent[-1] < size // 2, sent  # throttled, not read ahead to the end...
        assert sent[-1] - sent[len(sent) // 2] < 2 * 1024 * 1024, sent  # ...and stalled while the client dawdled
        assert max(growth) < size // 4, growth  # nothing like the stream's size is held in memory
        assert min(in_use) == 0 and in_use.count(0) >= len(in_use) // 2, in_use  # no connection held for it
        # the client left: the upstream is stopped (nobody reads it), and what was delivered is billed, capped at
        # the output limit the provider was sent (it cannot have generated more); nothing stays open
        # (the fake's padding deltas carry megabytes of text: far past max_tokens, so the limit's cost)
        assert await settled(spend_stack, account, rule_id, within=20) == (RESERVED, RESERVED)
        assert not upstream.done and upstream.sent < size // 2
        for _ in range(100):
            if pool_in_use(spend_stack) == 0:
                break
            await asyncio.sleep(0.05)
        assert pool_in_use(spend_stack) == 0
    await assert_all_invariants(db)
