from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.db import Database
from tests.pg import fresh_database


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(database_url, min_size=2, max_size=20)
    try:
        yield database
    finally:
        await database.close()
