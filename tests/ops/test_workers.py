"""`SPENDGATE_WORKERS=2`: one `spendgate serve` runs two server processes on one port, each with its own app and
pool, and stops them all on SIGTERM."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import psutil
import pytest

from harness.cluster import GatewayProcess, Operator, gateway_env
from harness.fakes import FakeServer, openai_app

pytestmark = pytest.mark.timeout(90)

ADMIN = "ops-workers-admin"


@pytest.fixture
def upstream() -> Iterator[FakeServer]:
    with FakeServer(openai_app("/v1")) as fake:
        yield fake


def test_two_workers_serve_one_port(database_url: str, upstream: FakeServer) -> None:
    env = gateway_env(database_url, ADMIN, {"openai": upstream.url + "/v1"}, SPENDGATE_WORKERS="2",
                      SPENDGATE_DB_POOL_MAX="4")
    gateway = GatewayProcess(env).start().wait_ready()
    try:
        # uvicorn's supervisor and its worker processes (a multiprocessing helper may be among the children)
        children = psutil.Process(gateway.pid).children()
        workers = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(workers) == 2, [c.cmdline() for c in children]
        account = Operator(gateway.url, ADMIN).new_account(credits_usd="5")
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
        with httpx.Client(timeout=10) as client:
            answers = [client.post(f"{gateway.url}/v1/{account}/g/openai/chat/completions", json=body,
                                   headers={"connection": "close"}) for _ in range(20)]
        assert [a.status_code for a in answers] == [200] * 20
    finally:
        code = gateway.stop()
    assert code is not None, gateway.log()
    assert not any(_alive(c) for c in workers)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
