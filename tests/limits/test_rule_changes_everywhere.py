"""A rule change made on one instance applies on every other instance within a second (LISTEN/NOTIFY), while
each instance serves its rules from its own cache in between."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from gateway.db import Database
from gateway.gateways import GatewayStore
from gateway.limits.store import LimitStore
from tests.limits.test_store_and_alerts import SPEC, USD, new_gateway


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 1.0) -> float:
    began = time.monotonic()
    while not await check():
        assert time.monotonic() - began < within, "not applied within a second"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


async def test_a_rule_change_reaches_the_other_instance_within_a_second(db: Database) -> None:
    account, gateway = await new_gateway(db)
    here, there = GatewayStore(db), GatewayStore(db)
    await here.start()  # returns once listening
    await there.start()
    try:
        writer, reader = LimitStore(db, here), LimitStore(db, there)
        assert await reader.rules(account, gateway) == []  # cached empty on the other instance
        rule = await writer.create_rule(account, gateway, SPEC)

        async def created() -> bool:
            return [r.id for r in await reader.rules(account, gateway)] == [rule.id]

        await eventually(created)
        await writer.replace_rule(account, gateway, rule.id, {**SPEC, "budget_usd": "20"})

        async def replaced() -> bool:
            return (await reader.rules(account, gateway))[0].budget_nano == 20 * USD

        await eventually(replaced)
        await writer.delete_rule(account, gateway, rule.id)

        async def deleted() -> bool:
            return await reader.rules(account, gateway) == []

        await eventually(deleted)
    finally:
        await here.stop()
        await there.stop()
