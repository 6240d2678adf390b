from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.db import Database
from tests.pg import fresh_database


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


# The suite shares one Postgres server whose default max_connections is 100: this pool, the package-scoped gateway
# stacks (10 and 15) and up to three `spendgate serve` processes of 10 each (tests/cluster.py) stay well below it.
@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.connect(database_url, min_size=2, max_size=16)
    try:
        yield database
    finally:
        await database.close()
