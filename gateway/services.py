"""The shared resources of one gateway process: settings, database pool, caches, the upstream client.

Started by the app's lifespan, or lazily on the first request when the app is mounted inside another ASGI
app whose lifespan does not reach it (Starlette's Mount does not forward lifespan events).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from gateway.db import Database, embedded_database_url, log_failure, migrate
from gateway.gateways import GatewayStore
from gateway.ledger import AutoTopUps, Ledger
from gateway.limits.alerts import AlertDelivery
from gateway.limits.reservations import Limits
from gateway.limits.settlements import Settlements
from gateway.limits.store import LimitStore
from gateway.logs.writer import LogWriter
from gateway.metrics import Metrics
from gateway.providers.store import ProviderStore
from gateway.routes.store import RouteStore
from gateway.settings import Settings

log = logging.getLogger("spendgate")


class Services:
    def __init__(
        self, settings: Settings, db: Database | None = None, *, run_migrations: bool = True,
        background: bool = True,
    ) -> None:
        self.settings = settings
        self._background = background
        self._tasks: list[asyncio.Task[None]] = []
        self._ledger: Ledger | None = None
        self.auto_topups: AutoTopUps | None = None
        self._providers: ProviderStore | None = None
        self.log_writer: LogWriter | None = None
        self._http: Any = None
        self._db = db
        self._owns_db = db is None
        self._run_migrations = run_migrations
        self._gateways: GatewayStore | None = None
        self._started = False
        self._lock = asyncio.Lock()
        # Parts register start/stop hooks (log writer, sweeper, listeners) instead of app.py knowing them all.
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self.extras: dict[str, Any] = {}
        self.limits: Limits | None = None
        self.settlements: Settlements | None = None
        self.limit_store: LimitStore | None = None
        self.route_store: RouteStore | None = None
        self.alerts: AlertDelivery | None = None
        self.metrics = Metrics(pool_stats=self._pool_stats, holds_open=lambda: len(self.settlements.open)
                               if self.settlements is not None else 0,
                               log_queue=lambda: self.log_writer.depth if self.log_writer is not None else 0)
        # What "now" is for spend-limit windows. Tests replace it to move time; nothing else should.
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def _pool_stats(self) -> tuple[int, int, int] | None:
        return self._db.stats() if self._db is not None else None

    @property
    def db(self) -> Database:
        if self._db is None:
            raise RuntimeError("services not started")
        return self._db

    @property
    def gateways(self) -> GatewayStore:
        if self._gateways is None:
            raise RuntimeError("services not started")
        return self._gateways

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise RuntimeError("services not started")
        return self._ledger

    @property
    def providers(self) -> ProviderStore:
        if self._providers is None:
            raise RuntimeError("services not started")
        return self._providers

    @property
    def http(self) -> Any:
        """The one shared upstream client (httpx API over the aiohttp transport)."""
        if self._http is None:
            raise RuntimeError("services not started")
        return self._http

    @property
    def started(self) -> bool:
        return self._started

    def on_start(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._on_start.append(hook)

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._on_stop.append(hook)

    async def start(self) -> None:
        async with self._lock:
            if self._started:
                return
            if self._db is None:
                url = self.settings.database_url
                if url is None:
                    url = await asyncio.to_thread(embedded_database_url, self.settings.data_dir)
                if self._run_migrations:
                    await asyncio.to_thread(migrate, url)
                self._db = await Database.connect(
                    url, min_size=self.settings.db_pool_min, max_size=self.settings.db_pool_max
                )
            self._gateways = GatewayStore(self._db, fail_open=self.settings.db_unavailable == "fail_open_byok")
            await self._gateways.start()
            self._ledger = Ledger(self._db)
            self._providers = ProviderStore(self._db, self._gateways)
            from gateway.providers.router import make_client

            self._http = make_client()
            self.limits = Limits(self._db)
            self.settlements = Settlements(self.limits, lambda: self.clock())
            self.limit_store = LimitStore(self._db, self._gateways)
            self.route_store = RouteStore(self._db, self._gateways)
            self.alerts = AlertDelivery(self._db, self._http)
            self.log_writer = LogWriter(self._db)
            self.log_writer.start()  # always: logs are part of serving, not a background chore
            self.auto_topups = AutoTopUps(self._ledger)
            # settlements that met a database outage are retried in every process (workers or not)
            self._tasks.append(asyncio.create_task(self._retry_settlements(), name="spendgate-settlements"))
            if self._background:
                self.auto_topups.start()
                self._tasks.append(asyncio.create_task(
                    self._sweep(self.settings.sweep_interval_seconds), name="spendgate-sweeper"))
                self._tasks.append(asyncio.create_task(self._deliver_alerts(), name="spendgate-alerts"))
            for hook in self._on_start:
                await hook()
            self._started = True

    async def stop(self) -> None:
        async with self._lock:
            if not self._started:
                return
            # Calls the server cancelled at its shutdown deadline settle first, then the log rows of every call
            # (those included) are flushed; only then do the background tasks and the pool go.
            if self.settlements is not None:
                await self.settlements.drain(deadline_s=10.0)
            if self.limits is not None:
                await self.limits.drain()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
            if self.auto_topups is not None:
                await self.auto_topups.stop()
            for hook in reversed(self._on_stop):
                try:
                    await hook()
                except Exception:
                    log.exception("error while stopping")
            if self.log_writer is not None:
                await self.log_writer.stop()
            if self._http is not None:
                await self._http.aclose()
                self._http = None
            if self._gateways is not None:
                await self._gateways.stop()
            if self._owns_db and self._db is not None:
                await self._db.close()
                self._db = None
            self._started = False

    async def _retry_settlements(self, interval: float = 1.0) -> None:
        assert self.settlements is not None
        while True:
            await asyncio.sleep(interval)
            try:
                await self.settlements.retry_waiting()
            except Exception as exc:
                log_failure(log, "settlement retry", exc)

    async def _deliver_alerts(self, interval: float = 1.0) -> None:
        """Drain the alert outbox (limits.alerts) to the gateways' webhooks; every instance may run it."""
        assert self.alerts is not None
        while True:
            try:
                await self.alerts.deliver_due()
            except Exception as exc:
                log_failure(log, "alert delivery", exc)
            await asyncio.sleep(interval)

    async def _sweep(self, interval: float = 5.0) -> None:
        """Release what dead instances left behind: overdue reservations (their holds with them), then any
        overdue hold. Every instance runs it; SKIP LOCKED and the settle-once guards make that safe."""
        limits = Limits(self.db)
        while True:
            try:
                await limits.expire_overdue()
                await self.ledger.expire_due()
            except Exception as exc:
                log_failure(log, "sweeper", exc)
            await asyncio.sleep(interval)
