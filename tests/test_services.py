"""Services: before `start()` there is nothing to reach; after it, every part is there (one `Running`) and each
background worker runs its own loop; `stop()` ends every one of them and leaves a pool it was given open.
Periodic, the loop those workers share: it keeps going through failures and stops when told."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.db import Database
from gateway.services import Running, Services
from gateway.settings import Settings
from gateway.workers import Periodic


async def test_started_services_have_every_part_and_stop_ends_every_worker(db: Database) -> None:
    services = Services(Settings(database_url=db.url), db, run_migrations=False)
    with pytest.raises(RuntimeError, match="not started"):
        services.running  # noqa: B018
    started: list[Running] = []

    async def hook(running: Running) -> None:
        started.append(running)

    services.on_start(hook)
    before = asyncio.all_tasks()  # other tests' gateways may share this event loop
    await services.start()
    try:
        running = services.running
        assert started == [running] and services.started
        assert running.gateways.listening
        for worker in (running.settlement_retries, running.sweeper, running.alert_delivery):
            assert worker.running, worker.name
        ours = {task for task in asyncio.all_tasks() - before if task.get_name().startswith("spendgate-")}
        assert {task.get_name() for task in ours} >= {
            "spendgate-settlements", "spendgate-sweeper", "spendgate-alerts", "spendgate-auto-topups",
            "spendgate-log-writer", "spendgate-config-listener"}
        await services.start()  # once only
        assert services.running is running and started == [running]
    finally:
        await services.stop()
    assert not services.started
    for worker in (running.settlement_retries, running.sweeper, running.alert_delivery):
        assert not worker.running, worker.name
    assert not running.gateways.listening
    assert not [task.get_name() for task in ours if not task.done()]
    assert await db.pool.fetchval("SELECT 1") == 1  # the pool was the caller's: still open


async def test_without_background_only_what_serving_needs_runs(db: Database) -> None:
    services = Services(Settings(database_url=db.url), db, run_migrations=False, background=False)
    await services.start()
    try:
        running = services.running
        assert running.settlement_retries.running  # settlements are retried in every process
        assert not running.sweeper.running and not running.alert_delivery.running
    finally:
        await services.stop()


async def test_periodic_runs_through_failures_until_stopped(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    third = asyncio.Event()

    async def action() -> None:
        runs.append(len(runs))
        if len(runs) == 3:
            third.set()
        if len(runs) == 1:
            raise RuntimeError("first run fails")

    worker = Periodic("test-periodic", "test action", action, 0.01)
    with caplog.at_level(logging.ERROR, logger="spendgate"):
        worker.start()
        await asyncio.wait_for(third.wait(), 5)
        await worker.stop()
    assert not worker.running and "test action" in caplog.text
    count = len(runs)
    await asyncio.sleep(0.05)
    assert len(runs) == count  # stopped means stopped


async def test_periodic_can_wait_one_interval_first() -> None:
    runs: list[float] = []

    async def action() -> None:
        runs.append(asyncio.get_running_loop().time())

    worker = Periodic("test-periodic", "test action", action, 0.2, wait_first=True)
    worker.start()
    await asyncio.sleep(0.05)
    assert runs == []
    await worker.stop()
