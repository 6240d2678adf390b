from __future__ import annotations

import httpx

from gateway.app import create_app
from gateway.db import Database, migration_heads
from gateway.settings import Settings


async def test_healthz_and_readyz_on_a_migrated_database(db: Database) -> None:
    app = create_app(Settings(database_url=db.url), db=db)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
    assert await db.is_current()
    assert migration_heads()


async def test_readyz_is_503_when_migrations_are_missing(db: Database) -> None:
    rows = await db.pool.fetch("SELECT version_num FROM alembic_version")
    await db.pool.execute("DELETE FROM alembic_version")
    try:
        assert not await db.is_current()
    finally:
        await db.pool.executemany("INSERT INTO alembic_version VALUES ($1)", [(r[0],) for r in rows])
    assert await db.is_current()
