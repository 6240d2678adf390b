"""Alembic environment: async engine on asyncpg; one transaction under an advisory lock.

Like the versions, this file imports nothing from `gateway`: what a migration installs depends on its own file
only, never on the code of the day. `alembic check` and autogenerate compare the database with the tables the code
defines; whoever runs them hands that metadata in as `config.attributes["target_metadata"]`
(gateway.db.alembic_config does). An upgrade never reads it.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

# Several instances starting together migrate one at a time: each takes this lock first.
MIGRATION_LOCK_KEY = 0x5350454E44  # "SPEND"

config = context.config
target_metadata = config.attributes.get("target_metadata")


def _url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set; run `spendgate migrate` to use the embedded database")
    # the asyncpg driver, the only one installed
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("DATABASE_URL must start with postgresql://")


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=False,
                      # `alembic check`: the ledger's and the spend limits' schemas too, and server defaults
                      include_schemas=True, compare_server_default=True)
    with context.begin_transaction():
        # Instances starting together serialise here; the lock ends with the transaction.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def _online() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_online())
