"""GatewayStore's cache: a miss reads without writing (the table's NOTIFY trigger fires per statement, so a
write on every miss would drop every instance's caches), and `default` is created once, on first use. Its
listener: `start()` returns once the LISTEN is registered, so a change committed right after is heard."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from gateway.db import Database
from gateway.gateways import GatewayStore


async def heard_until(heard: list[str], marker: str, within: float = 5.0) -> None:
    """Wait for `marker`; notifications arrive in commit order, so whatever was sent before it has arrived too."""
    deadline = time.monotonic() + within
    while marker not in heard:
        assert time.monotonic() < deadline, f"{marker!r} not heard within {within} s; heard {heard}"
        await asyncio.sleep(0.01)


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
        await db.pool.execute("SELECT pg_notify($1, 'marker-1')", GatewayStore.CHANNEL)
        await heard_until(heard, "marker-1")
        assert heard == ["marker-1"]  # reading an existing gateway wrote nothing
        first = await store.get(account, "default")
        store.invalidate("again")
        second = await store.get(account, "default")
        assert first == second and first.settings.collect_logs
        await db.pool.execute("SELECT pg_notify($1, 'marker-2')", GatewayStore.CHANNEL)
        await heard_until(heard, "marker-2")
        assert heard == ["marker-1", "gateways", "marker-2"]  # the one real change: default was created
    finally:
        await listener.close()


async def test_a_change_sent_right_after_start_is_heard(db: Database) -> None:
    for _ in range(3):  # start() must not return before the LISTEN is registered, every time
        store = GatewayStore(db)
        heard: list[str] = []
        store.on_change(heard.append)
        await store.start()
        try:
            assert store.listening
            marker = f"marker-{uuid.uuid4().hex[:8]}"
            await db.pool.execute("SELECT pg_notify($1, $2)", GatewayStore.CHANNEL, marker)
            await heard_until(heard, marker)
        finally:
            await store.stop()
        assert not store.listening
