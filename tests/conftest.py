from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.db import Database
from harness.pg import fresh_database


def pytest_configure(config: pytest.Config) -> None:
    _share_default_ssl_context()


def _share_default_ssl_context() -> None:
    """Every httpx client builds an SSL context at creation (~18 ms: it loads the CA bundle), and the tests create
    thousands (their own, and the SDKs': the openai SDK brings its own copy of httpx, `httpx2`), all for plain
    HTTP on loopback. Clients created with the default arguments share one context here. Test-only: the gateway
    itself creates one client per process."""
    import functools
    import importlib

    for package in ("httpx", "httpx2"):
        try:
            default = importlib.import_module(f"{package}._transports.default")
        except ImportError:
            continue
        create = default.create_ssl_context
        shared = functools.lru_cache(maxsize=4)(create)

        def create_ssl_context(verify: object = True, cert: object = None, trust_env: bool = True,
                               _create: object = create, _shared: object = shared) -> object:
            make = _shared if verify is True and cert is None else _create
            return make(verify=verify, cert=cert, trust_env=trust_env)  # type: ignore[operator]

        default.create_ssl_context = create_ssl_context


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


# The suite shares one Postgres server whose default max_connections is 100: this pool, the package-scoped gateway
# stacks (10 and 15) and up to three `spendgate serve` processes of 10 each (harness/cluster.py) stay well below it.
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
    "tests/cli/test_commands.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        where = item.path.relative_to(root).as_posix()
        if where.startswith(SLOW_FILES):
            item.add_marker(pytest.mark.slow)
