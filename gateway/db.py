"""The database: an asyncpg pool on the hot path, migrations through Alembic, embedded Postgres by default.

Production sets `DATABASE_URL`. Without it, `embedded_database_url` starts a private Postgres server from the
`pgserver` package (it ships the server binaries) under `$SPENDGATE_DATA_DIR/pg`, so that `make run` needs
nothing installed. The embedded server listens on a Unix socket only and stops when the process exits.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger("spendgate.db")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Same constant in migrations/env.py: several instances starting together migrate one at a time.
MIGRATION_LOCK_KEY = 0x5350454E44  # "SPEND"


def embedded_database_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded Postgres under data_dir/pg and return its URL."""
    import pgserver  # imported lazily: production never needs it

    pgdata = (data_dir / "pg").resolve()  # pgserver re-exports get_server without __all__
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    return str(server.get_uri())


def alembic_config(database_url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = database_url
    return cfg


def migrate(database_url: str, revision: str = "heads") -> None:
    """Apply migrations (blocking; call from a thread inside an event loop)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def migration_heads() -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config("")).get_heads())


def sqlalchemy_url(database_url: str) -> str:
    """asyncpg URL -> SQLAlchemy URL with the asyncpg driver (the only driver we ship)."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+asyncpg://" + database_url[len(prefix) :]
    raise ValueError("DATABASE_URL must start with postgresql://")


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog")


def _json_dumps(value: Any) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), default=str)


def _json_loads(value: str) -> Any:
    import json

    return json.loads(value)


# What "the database is unreachable" looks like from asyncpg: a refused or dropped connection, a server shutting
# down or starting up, too many clients, a pool that is closing, a query that timed out.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.InterfaceError,
)


def unavailable(exc: BaseException) -> bool:
    """Is this exception the database being unreachable (answer 503, retry later), not a bug or bad data?"""
    return isinstance(exc, UNAVAILABLE)


def log_failure(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """A background task's failure: one line while the database is away (it is expected and retried), the
    traceback for anything else."""
    if unavailable(exc):
        logger.warning("%s: database unavailable (%s: %s); retrying", what, type(exc).__name__, exc)
    else:
        logger.error("%s failed", what, exc_info=exc)


class Database:
    """The process's connection pool. `pool` is an asyncpg.Pool; jsonb columns decode to Python objects."""

    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        self.pool = pool
        self.url = url
        self._expiring: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, *, min_size: int = 2, max_size: int = 20) -> Database:
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=_init_connection, command_timeout=30
        )
        assert pool is not None
        return cls(pool, url)

    async def close(self) -> None:
        await self.pool.close()

    def connection_lost(self) -> None:
        """After an outage every pooled connection may be dead: replace them all on their next acquire, so the
        pool recovers at once instead of failing one request per stale connection."""
        if self._expiring is None or self._expiring.done():
            self._expiring = asyncio.get_running_loop().create_task(self.pool.expire_connections())

    def stats(self) -> tuple[int, int, int]:
        """(connections open, idle, max) for metrics."""
        return self.pool.get_size(), self.pool.get_idle_size(), self.pool.get_max_size()

    async def is_current(self) -> bool:
        """Reachable, and every migration head is applied."""
        try:
            rows = await asyncio.wait_for(self.pool.fetch("SELECT version_num FROM alembic_version"), 2)
        except (TimeoutError, asyncpg.PostgresError, OSError):
            return False
        return {r["version_num"] for r in rows} == migration_heads()


def run_script(sql: str) -> None:
    """Run a multi-statement SQL script inside an Alembic migration (functions, triggers, views).

    SQLAlchemy's asyncpg adapter prepares every statement, and a prepared statement holds one command;
    asyncpg's own `execute` without arguments runs a whole script, so migrations call this instead of op.execute.
    """
    from alembic import op
    from sqlalchemy.util import await_only

    driver_connection = op.get_bind().connection.driver_connection
    assert driver_connection is not None
    await_only(driver_connection.execute(sql))
