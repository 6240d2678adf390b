"""Migration 0015: a database whose account spending limits were stored as `sliding` ends up with `rolling`
(and back on downgrade), on its own fresh database."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from alembic import command

from gateway.db import alembic_config, migrate
from harness.pg import _admin, _with_database

BEFORE = "0014_component_prices"
OLD_CHECK = ("(spend_limit IS NULL) = (spend_limit_duration IS NULL) AND (spend_limit IS NULL) = (spend_limit_strategy "
             "IS NULL) AND spend_limit_duration IN ('daily', 'weekly', 'monthly') AND spend_limit_strategy IN "
             "('fixed', 'sliding')")


async def strategies(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT owner, spend_limit_strategy FROM ledger.accounts WHERE code = 'credits'")
        return {r["owner"]: r["spend_limit_strategy"] for r in rows}
    finally:
        await conn.close()


async def test_sliding_becomes_rolling(database_url: str) -> None:
    name = f"spendgate_mig_{uuid.uuid4().hex[:8]}"
    await _admin(database_url, f'CREATE DATABASE "{name}"')
    url = _with_database(database_url, name)
    try:
        await asyncio.to_thread(migrate, url, BEFORE)
        # as a database created before the rename has it: its CHECK allows `sliding`, and a limit uses it
        await _admin(url, f"""
            ALTER TABLE ledger.accounts DROP CONSTRAINT ck_accounts_spend_limit;
            ALTER TABLE ledger.accounts ADD CONSTRAINT ck_accounts_spend_limit CHECK ({OLD_CHECK});
            SELECT ledger.open_tenant('old'), ledger.open_tenant('fixed'), ledger.open_tenant('none');
            UPDATE ledger.accounts SET spend_limit = 1, spend_limit_duration = 'daily',
                   spend_limit_strategy = CASE owner WHEN 'old' THEN 'sliding' ELSE 'fixed' END
             WHERE code = 'credits' AND owner IN ('old', 'fixed');
        """)
        await asyncio.to_thread(migrate, url)
        assert await strategies(url) == {"old": "rolling", "fixed": "fixed", "none": None}
        with pytest.raises(asyncpg.CheckViolationError):
            await _admin(url, "UPDATE ledger.accounts SET spend_limit_strategy = 'sliding' WHERE owner = 'old' "
                              "AND code = 'credits'")
        await asyncio.to_thread(command.downgrade, alembic_config(url), BEFORE)
        assert await strategies(url) == {"old": "sliding", "fixed": "fixed", "none": None}
    finally:
        await _admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
