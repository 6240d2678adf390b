"""ConfigCache: fresh entries, last-known values during an outage (fail_open only), and no stale store after a
change that arrived while a load was running."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config_cache import ConfigCache


async def test_a_change_during_a_load_is_not_overwritten_by_the_old_value() -> None:
    cache: ConfigCache[str, str] = ConfigCache()
    release = asyncio.Event()

    async def slow_old() -> str:
        await release.wait()
        return "old"

    loading = asyncio.create_task(cache.get("k", slow_old))
    await asyncio.sleep(0)
    cache.forget()  # NOTIFY: the rules changed while the old ones were being read
    release.set()
    assert await loading == "old"  # that one caller gets what it read...

    async def new() -> str:
        return "new"

    assert await cache.get("k", new) == "new"  # ...but it was not kept


async def test_last_known_value_only_when_failing_open_and_only_for_an_outage() -> None:
    async def down() -> str:
        raise ConnectionRefusedError(111, "refused")

    async def bug() -> str:
        raise ValueError("not an outage")

    async def value() -> str:
        return "v1"

    closed: ConfigCache[str, str] = ConfigCache()
    opened: ConfigCache[str, str] = ConfigCache(fail_open=True)
    for cache in (closed, opened):
        assert await cache.get("k", value) == "v1"
        cache.clear()  # the listener lost its connection
    with pytest.raises(ConnectionRefusedError):
        await closed.get("k", down)
    assert await opened.get("k", down) == "v1"
    with pytest.raises(ValueError):
        await opened.get("k", bug)
    opened.forget()  # a real change: what was known is gone
    with pytest.raises(ConnectionRefusedError):
        await opened.get("k", down)
