"""The shared resources of one gateway process.

`Services` is what exists before anything runs (the settings, the clock, the metrics) and starts the rest once:
the database pool, the stores and caches, the upstream client and the background workers, all in one `Running`
whose attributes are always there. Started by the app's lifespan, or lazily on the first request when the app is
mounted inside another ASGI app whose lifespan does not reach it (Starlette's Mount does not forward lifespan
events).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.analytics import budgets
from gateway.cache.store import CacheStore
from gateway.db import Database, embedded_database_url, migrate
from gateway.gateways import GatewayStore
from gateway.ledger import AutoTopUps, Ledger
from gateway.limits.alerts import AlertDelivery
from gateway.limits.pruning import prune_rate_buckets
from gateway.limits.reservations import Limits
from gateway.limits.settlements import Settlements
from gateway.limits.store import LimitStore
from gateway.logs.writer import LogWriter
from gateway.metrics import Metrics
from gateway.providers.store import ProviderStore
from gateway.routes.store import RouteStore
from gateway.settings import Settings
from gateway.tokens import TokenStore
from gateway.workers import Periodic

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("spendgate")


@dataclass(frozen=True)
class Running:
    """The parts of a started gateway process. The admin endpoints take it as their `AdminServices`."""

    db: Database
    gateways: GatewayStore  # its NOTIFY listener is running
    ledger: Ledger
    providers: ProviderStore
    tokens: TokenStore
    limit_store: LimitStore
    route_store: RouteStore
    cache: CacheStore  # the response cache's entries (gateway/cache/store.py)
    limits: Limits
    settlements: Settlements
    http: httpx.AsyncClient  # the one shared upstream client (httpx API over the aiohttp transport)
    log_writer: LogWriter
    clock: Callable[[], datetime]  # Services.clock, as it is when called
    # background workers
    settlement_retries: Periodic  # settlements that met a database outage, retried (in every process)
    auto_topups: AutoTopUps
    sweeper: Periodic
    alert_delivery: Periodic
    forecast_alerts: Periodic  # rules whose alert_at has "forecast" (gateway/analytics/budgets.py)
    cache_sweeper: Periodic  # expired cache entries and abandoned claims, deleted (every instance may run it)


class Services:
    def __init__(
        self, settings: Settings, db: Database | None = None, *, run_migrations: bool = True,
        background: bool = True,
    ) -> None:
        """`db`: a pool the caller owns (else one is opened at start and closed at stop). `background=False`: no
        sweeper, auto top-ups, alert delivery or cache sweep in this process."""
        self.settings = settings
        self._background = background
        self._db = db
        self._run_migrations = run_migrations
        self._running: Running | None = None
        self._lock = asyncio.Lock()
        self._on_start: list[Callable[[Running], Awaitable[None]]] = []
        self.metrics = Metrics(pool_stats=self._pool_stats, holds_open=self._holds_open, log_queue=self._log_queue)
        # What "now" is for spend-limit windows. Tests replace it to move time; nothing else should.
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @property
    def started(self) -> bool:
        return self._running is not None

    @property
    def running(self) -> Running:
        """The started parts; RuntimeError before `start()` (and after `stop()`)."""
        if self._running is None:
            raise RuntimeError("services not started")
        return self._running

    def on_start(self, hook: Callable[[Running], Awaitable[None]]) -> None:
        """Run `hook` at the end of every start, before any request is served."""
        self._on_start.append(hook)

    def _pool_stats(self) -> tuple[int, int, int] | None:
        return self._running.db.stats() if self._running is not None else None

    def _holds_open(self) -> int:
        return self._running.settlements.unsettled if self._running is not None else 0

    def _log_queue(self) -> int:
        return self._running.log_writer.depth if self._running is not None else 0

    async def start(self) -> None:
        async with self._lock:
            if self._running is not None:
                return
            db = self._db or await self._connect()
            gateways = GatewayStore(db, fail_open=self.settings.db_unavailable == "fail_open_byok")
            await gateways.start()
            from gateway.providers.router import make_client

            http = make_client()
            ledger = Ledger(db)
            limits = Limits(db)
            settlements = Settlements(limits, lambda: self.clock())
            alerts = AlertDelivery(db, http)
            sweep_limits = Limits(db)
            cache = CacheStore(db)

            async def sweep() -> None:
                """Release what dead instances left behind: overdue reservations (their holds with them), then any
                overdue hold; and delete rate-limit buckets that can no longer count. Every instance runs it; SKIP
                LOCKED, the settle-once guards and deleting only what nothing holds make that safe."""
                await sweep_limits.expire_overdue()
                await ledger.expire_due()
                await prune_rate_buckets(db, self.clock())

            running = Running(
                db=db, gateways=gateways, ledger=ledger, providers=ProviderStore(db, gateways),
                tokens=TokenStore(db, gateways), limit_store=LimitStore(db, gateways),
                route_store=RouteStore(db, gateways), cache=cache, limits=limits, settlements=settlements, http=http,
                log_writer=LogWriter(db), clock=lambda: self.clock(),
                settlement_retries=Periodic("spendgate-settlements", "settlement retry", settlements.retry_waiting,
                                            1.0, wait_first=True),
                auto_topups=AutoTopUps(ledger),
                sweeper=Periodic("spendgate-sweeper", "sweeper", sweep, self.settings.sweep_interval_seconds),
                # the alert outbox (limits.alerts) to the gateways' webhooks; every instance may run it
                alert_delivery=Periodic("spendgate-alerts", "alert delivery", alerts.deliver_due, 1.0),
                forecast_alerts=Periodic("spendgate-forecasts", "forecast alerts",
                                         lambda: budgets.record_forecast_alerts(db, self.clock()), 60.0),
                cache_sweeper=Periodic("spendgate-cache-sweeper", "cache sweep", cache.sweep,
                                       self.settings.sweep_interval_seconds),
            )
            running.log_writer.start()  # always: logs are part of serving, not a background chore
            running.settlement_retries.start()
            if self._background:
                running.auto_topups.start()
                running.sweeper.start()
                running.alert_delivery.start()
                running.forecast_alerts.start()
                running.cache_sweeper.start()
            try:
                for hook in self._on_start:
                    await hook(running)
            except BaseException:
                await self._shutdown(running)
                raise
            self._running = running

    async def _connect(self) -> Database:
        url = self.settings.database_url
        if url is None:
            url = await asyncio.to_thread(embedded_database_url, self.settings.data_dir)
        if self._run_migrations:
            await asyncio.to_thread(migrate, url)
        return await Database.connect(url, min_size=self.settings.db_pool_min, max_size=self.settings.db_pool_max)

    async def stop(self) -> None:
        async with self._lock:
            if self._running is None:
                return
            running, self._running = self._running, None
            await self._shutdown(running)

    async def _shutdown(self, r: Running) -> None:
        # Calls the server cancelled at its shutdown deadline settle first, then the log rows of every call
        # (those included) are flushed; only then do the background workers and the pool go.
        await r.settlements.drain(deadline_s=10.0)
        await r.limits.drain()
        for worker in (r.settlement_retries, r.sweeper, r.alert_delivery, r.forecast_alerts,
                       r.cache_sweeper):
            await worker.stop()
        await r.auto_topups.stop()
        await r.log_writer.stop()
        await r.http.aclose()
        await r.gateways.stop()
        if self._db is None:  # the pool is ours
            await r.db.close()
