"""GatewayStore's cache: a miss reads without writing (the table's NOTIFY trigger fires per statement, so a
write on every miss would drop every instance's caches), and `default` is created once, on first use."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from gateway.db import Database
from gateway.gateways import GatewayStore


async def test_cache_misses_do_not_notify_and_default_is_created_once(db: Database) -> None:
    account = f"t{uuid.uuid4().hex[:10]}"
    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", account)
    await db.pool.execute("INSERT INTO gateways (account_id, id) VALUES ($1, 'prod')", account)
    heard: list[str] = []
    listener = await asyncpg.connect(db.url)
    await listener.add_listener(GatewayStore.CHANNEL, lambda _c, _pid, _ch, payload: heard.append(payload))
    try:
        store = GatewayStore(db)
        for _ in range(3):
            assert (await store.get(account, "prod")).id == "prod"
            store.invalidate(f"miss-{_}")  # force the next get to read again
        await asyncio.sleep(0.3)
        assert heard == []  # reading an existing gateway wrote nothing
        first = await store.get(account, "default")
        store.invalidate("again")
        second = await store.get(account, "default")
        assert first == second and first.settings.collect_logs
        await asyncio.sleep(0.3)
        assert heard == ["gateways"]  # the one real change: default was created
    finally:
        await listener.close()
