"""Clients without a token cannot write to a gateway's log (found by an adversarial review): on a gateway with
`authentication` their 401s were logged, `cf-aig-collect-log: true` logged them on a gateway with logs off, and
under `log_retention: DELETE_OLDEST` five of them pushed the authenticated calls' rows out."""

from __future__ import annotations

import asyncio

import httpx

from gateway.db import Database
from tests.adversarial.conftest import HostileStack

BODY = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


async def rows(db: Database, account: str) -> list:
    await asyncio.sleep(1.5)  # the writer batches
    return await db.pool.fetch("SELECT status_code, error FROM request_logs WHERE account_id = $1 "
                               "ORDER BY created_at", account)


async def test_clients_without_a_token_cannot_write_or_evict_logs(hostile: HostileStack, db: Database) -> None:
    account, base = hostile.new_gateway(credits_usd="5", authentication=True,
                                        log_retention={"max_rows": 3, "strategy": "DELETE_OLDEST"})
    with hostile.admin() as admin:
        token = admin.post(f"/accounts/{account}/gateways/g/tokens", json={"name": "t"}).json()["result"]["token"]
    authorized = {"cf-aig-authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=30) as c:
        for _ in range(3):
            ok = await c.post(base + "/openai/chat/completions", json=BODY, headers=authorized)
            assert ok.status_code == 200, ok.text
        for _ in range(5):
            bad = await c.post(base + "/openai/chat/completions", json=BODY, headers={"cf-aig-collect-log": "true"})
            assert bad.status_code == 401 and "cf-aig-log-id" not in bad.headers
        last = await c.post(base + "/openai/chat/completions", json=BODY, headers=authorized)
        assert last.status_code == 200
    await asyncio.sleep(0.5)  # the writer's batch after the last call: refusals before it would be written by now
    assert [r["status_code"] for r in await rows(db, account)] == [200, 200, 200]
    # a gateway with logs off: a token-less client cannot force a row in
    off_account, off_base = hostile.new_gateway(authentication=True, collect_logs=False)
    async with httpx.AsyncClient(timeout=30) as c:
        refused = await c.post(off_base + "/openai/chat/completions", json=BODY,
                               headers={"cf-aig-collect-log": "true"})
    assert refused.status_code == 401
    await asyncio.sleep(0.5)
    assert await rows(db, off_account) == []
