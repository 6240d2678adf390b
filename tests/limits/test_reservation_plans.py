"""The reservation functions keep their planner settings (migrations 0026, 0027): a batch's lookups go through indexes
whatever the statistics say. A migration that replaces either function must set them again."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from gateway.db import Database

SETTINGS = {"enable_seqscan=off", "enable_bitmapscan=off", "enable_hashjoin=off", "plan_cache_mode=force_generic_plan"}


async def test_the_functions_carry_their_planner_settings(db: Database) -> None:
    rows = await db.pool.fetch(
        "SELECT p.proname, p.proconfig FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'limits' AND p.proname IN ('reserve', 'settle')")
    assert {r["proname"]: SETTINGS <= set(r["proconfig"] or ()) for r in rows} == {"reserve": True, "settle": True}


async def test_settings_do_not_leak_to_the_session(db: Database) -> None:
    async with db.pool.acquire() as conn:
        assert await conn.fetch("SELECT * FROM limits.settle($1)", [(uuid.uuid4(), 0, "settled", datetime.now(UTC),
                                                                      None)])
        assert await conn.fetchval("SHOW enable_seqscan") == "on"
        assert await conn.fetchval("SHOW enable_hashjoin") == "on"
