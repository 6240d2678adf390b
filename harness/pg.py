"""The test database, in this order: TEST_DATABASE_URL; a Testcontainers Postgres when a Docker engine
answers; the embedded Postgres. Every test run gets its own fresh database, migrated, dropped at the end,
so runs sharing one server never see each other's rows."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from gateway.db import migrate


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _docker_engine_answers() -> bool:
    import gc
    import warnings

    if not os.environ.get("DOCKER_HOST") and not os.path.exists("/var/run/docker.sock"):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # docker-py leaves its probe socket to the GC
        try:
            import docker

            client = docker.from_env(timeout=3)
        except Exception:
            return False
        try:
            return bool(client.ping())
        except Exception:
            return False
        finally:
            client.close()
            gc.collect()


@contextmanager
def server_url() -> Iterator[tuple[str, str]]:
    """Yield (url of a maintenance database, where it came from)."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url, "TEST_DATABASE_URL"
        return
    if _docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield pg.get_connection_url(), "testcontainers"
        return
    import pgserver

    with tempfile.TemporaryDirectory(prefix="spendgate-test-pg-") as tmp:
        server = pgserver.get_server(tmp, cleanup_mode="stop")
        try:
            yield server.get_uri(), "embedded"
        finally:
            server.cleanup()


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def database_beside(url: str, prefix: str = "spendgate_test") -> Iterator[str]:
    """A new, empty database on the server of `url` (any database there), dropped afterwards even if
    connections to it are still open."""
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(url, name)
    finally:
        asyncio.run(_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new, migrated database for this test run; dropped afterwards."""
    with server_url() as (url, source), database_beside(url) as db_url:
        migrate(db_url)
        os.environ["SPENDGATE_TEST_DB_SOURCE"] = source
        yield db_url
