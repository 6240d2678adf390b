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


# `pytest -m "not slow"` is the daily lane (see the README for how long each lane takes). These whole files are
# slow: they start real processes (gateways, nginx, a private Postgres), build images, or run bounded loads and
# property searches. Single slow tests elsewhere carry `@pytest.mark.slow` themselves.
SLOW_FILES = (
    "tests/ops/",
    "tests/deploy/",
    "tests/spend/test_multi_instance.py",
    "tests/spend/test_upstream_faults.py",
    "tests/adversarial/test_fuzz.py",
    "tests/ledger/test_state_machine.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        where = item.path.relative_to(root).as_posix()
        if where.startswith(SLOW_FILES):
            item.add_marker(pytest.mark.slow)
