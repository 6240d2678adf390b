"""The database: an asyncpg pool on the hot path, migrations through Alembic, embedded Postgres by default.

Production sets `DATABASE_URL`. Without it, `embedded_database_url` starts a private Postgres server from the
`pgserver` package (it ships the server binaries) under `$SPENDGATE_DATA_DIR/pg`, so that `make run` needs
nothing installed. The embedded server listens on a Unix socket only. pgserver stops it when the last process
holding a handle on it releases the handle (`release_embedded`, or pgserver's own atexit hook).

The migrations ship inside the package (`gateway/migrations`), so an installed wheel migrates like a checkout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

log = logging.getLogger("spendgate.db")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _pgserver() -> Any:
    """pgserver, imported lazily: production never needs it. Its import asks platformdirs for a runtime directory,
    which warns on every start where XDG_RUNTIME_DIR is unset (containers, CI, ssh without a login session)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        import pgserver
        import pgserver.postgres_server

    return pgserver


def embedded_pgdata(data_dir: Path) -> Path:
    return (data_dir / "pg").resolve()


def _process_runs(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def prune_dead_holders(pgdata: Path) -> list[int]:
    """Drop the handles of processes that no longer run; returns their pids.

    pgserver keeps the pids of the processes holding the server in `pgdata/.handle_pids.json` and stops the server
    when the last of them releases its handle. A process that was killed (SIGKILL, OOM killer, power loss) never
    removes its pid, so no later process would ever be the last one and the server would outlive them all."""
    pgserver = _pgserver()
    from pgserver.utils import DiskList

    holders = DiskList(pgdata / ".handle_pids.json")
    with pgserver.postgres_server.PostgresServer._lock:  # the lock pgserver itself takes around that file
        pids = holders.get()
        dead = [pid for pid in pids if pid != os.getpid() and not _process_runs(pid)]
        if dead:
            holders.put([pid for pid in pids if pid not in dead])
    if dead:
        log.info("embedded database: dropped the handles of processes that no longer run: %s", dead)
    return dead


def embedded_server(data_dir: Path) -> Any:
    """Start (or reuse) the embedded Postgres under data_dir/pg and take a handle on it for this process."""
    pgserver = _pgserver()
    pgdata = embedded_pgdata(data_dir)
    pgdata.mkdir(parents=True, exist_ok=True)
    prune_dead_holders(pgdata)
    return pgserver.get_server(pgdata, cleanup_mode="stop")


def release_embedded(server: Any) -> None:
    """Release this process's handle; the server stops when no running process holds one any more. Idempotent."""
    server.cleanup()


def embedded_database_url(data_dir: Path) -> str:
    """Start (or reuse) the embedded Postgres under data_dir/pg and return its URL. The handle is released when
    the process exits normally (pgserver's atexit hook)."""
    return str(embedded_server(data_dir).get_uri())


def describe_database(url: str) -> str:
    """The database URL for a console line: scheme, user, host, port and database; never the password."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = (f"{parts.username}@" if parts.username else "") + host + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme}://{netloc}{parts.path}"


def alembic_config(database_url: str) -> Any:
    """The migrations' Alembic configuration. The migrations import nothing from the package; the tables the code
    defines are handed to them here, for `alembic check` (alembic.command.check) and autogenerate only."""
    from alembic.config import Config

    from gateway.schema import complete_metadata

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["target_metadata"] = complete_metadata()
    return cfg


def migrate(database_url: str, revision: str = "heads") -> None:
    """Apply migrations (blocking; call from a thread inside an event loop)."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)


def migration_heads() -> set[str]:
    from alembic.script import ScriptDirectory

    return set(ScriptDirectory.from_config(alembic_config("")).get_heads())


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """What the pool runs on a connection given back, after asyncpg rolled back any open transaction: nothing.
    asyncpg's default (`UNLISTEN *; RESET ALL; CLOSE ALL; SELECT pg_advisory_unlock_all()`) is a second round trip
    and a second statement for the server after every `pool.fetch`, on every reservation, settlement and log
    batch. The gateway's pooled connections keep no session state to undo: the config listener has a connection
    of its own, advisory locks are transaction-scoped (`pg_advisory_xact_lock`), settings are `SET LOCAL`, no
    cursor outlives its transaction (tests/test_db_sessions.py keeps it so)."""


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


def rows_affected(status: str) -> int:
    """How many rows a command changed, from asyncpg's status string (`DELETE 3`, `UPDATE 0`, `INSERT 0 1`)."""
    return int(status.rsplit(" ", 1)[-1])


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
            url, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session, command_timeout=30
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

