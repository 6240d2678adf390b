from __future__ import annotations

import uuid

import pytest

from gateway.db import Database
from gateway.routes.graph import RouteError
from gateway.routes.store import RouteNotFound, RouteStore

V1 = {"start": "m", "elements": [{"id": "m", "type": "model", "model": "openai/gpt-5", "success": "e"},
                                 {"id": "e", "type": "end"}]}
V2 = {"start": "m", "elements": [{"id": "m", "type": "model", "model": "groq/llama", "success": "e"},
                                 {"id": "e", "type": "end"}]}


async def test_versions_and_deploy(db: Database) -> None:
    account = f"t{uuid.uuid4().hex[:10]}"
    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", account)
    await db.pool.execute("INSERT INTO gateways (account_id, id) VALUES ($1, 'gw')", account)
    store = RouteStore(db)
    await store.create(account, "gw", "support", V1)
    assert (await store.deployed(account, "gw", "support")) == V1
    with pytest.raises(RouteError):
        await store.create(account, "gw", "support", V1)
    assert (await store.add_version(account, "gw", "support", V2))["version"] == 2
    assert (await store.deployed(account, "gw", "support")) == V1  # a new version is not deployed by itself
    await store.deploy(account, "gw", "support", 2)
    assert (await store.deployed(account, "gw", "support")) == V2
    assert [v["deployed"] for v in await store.versions(account, "gw", "support")] == [False, True]
    assert (await store.summaries(account, "gw"))[0]["latest_version"] == 2
    with pytest.raises(RouteNotFound):
        await store.deploy(account, "gw", "support", 7)
    with pytest.raises(RouteNotFound):
        await store.add_version(account, "gw", "nope", V1)
    with pytest.raises(RouteError):
        await store.create(account, "gw", "Bad Name", V1)
    assert await store.deployed(account, "gw", "nope") is None
