"""The log writer: rows are queued after the response completed and written in batches by one task.

A write the database refuses because it is unreachable is kept and retried with backoff (up to the queue's
bound: past it rows are dropped and counted); any other failed write is reported in the process log and dropped.
Neither is ever turned into a failed call. `stop` flushes what is queued, retrying until its deadline. Retention per
gateway (`log_retention: {"max_rows", "strategy"}`): STOP_INSERTING skips rows once the gateway holds max_rows;
DELETE_OLDEST deletes the oldest rows past max_rows after each batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from gateway.db import Database, unavailable
from gateway.logs.schema import COLUMNS

log = logging.getLogger("spendgate.logs")

INSERT = (f"INSERT INTO request_logs ({', '.join(COLUMNS)}) "
          f"VALUES ({', '.join(f'${i + 1}' for i in range(len(COLUMNS)))}) ON CONFLICT (id) DO NOTHING")


class LogWriter:
    def __init__(self, db: Database, *, batch: int = 500, interval: float = 0.2, max_queue: int = 50_000) -> None:
        self.db = db
        self.batch = batch
        self.interval = interval
        self.queue: asyncio.Queue[tuple[dict[str, Any], dict[str, Any] | None]] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0

    def submit(self, row: dict[str, Any], retention: dict[str, Any] | None) -> None:
        try:
            self.queue.put_nowait((row, retention))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("request log queue full: a log row was dropped", extra={"request_id": str(row["id"])})

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="spendgate-log-writer")

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    async def stop(self, deadline_s: float = 10.0) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        end = time.monotonic() + deadline_s
        while not await self.flush():
            if time.monotonic() >= end:
                break
            await asyncio.sleep(0.2)
        if not self.queue.empty():
            log.error("%d request log rows could not be written before shutdown", self.queue.qsize())

    async def _run(self) -> None:
        backoff = self.interval
        while True:
            item = await self.queue.get()
            self.queue.put_nowait(item)
            await asyncio.sleep(backoff)
            backoff = self.interval if await self.flush() else min(backoff * 2, 5.0)

    async def flush(self) -> bool:
        """Write what is queued. False when the database was unreachable (the rows are queued again)."""
        while not self.queue.empty():
            items: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
            while not self.queue.empty() and len(items) < self.batch:
                items.append(self.queue.get_nowait())
            try:
                await self._write(items)
            except Exception as exc:
                if unavailable(exc):
                    log.warning("database unavailable: %d request log rows wait for it", len(items))
                    for row, retention in items:
                        self.submit(row, retention)
                    return False
                log.exception("writing %d request log rows failed; they are dropped", len(items))
        return True

    async def _write(self, items: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> None:
        by_gateway: dict[tuple[str, str], dict[str, Any] | None] = {}
        for row, retention in items:
            by_gateway[(row["account_id"], row["gateway_id"])] = retention
        async with self.db.pool.acquire() as conn, conn.transaction():
            room: dict[tuple[str, str], int] = {}  # STOP_INSERTING: rows the gateway may still take
            for (account, gateway), retention in by_gateway.items():
                if retention and retention.get("strategy") == "STOP_INSERTING":
                    count = await conn.fetchval(
                        "SELECT count(*) FROM request_logs WHERE account_id = $1 AND gateway_id = $2",
                        account, gateway)
                    room[(account, gateway)] = max(0, retention["max_rows"] - count)
            rows = []
            for row, _ in items:
                key = (row["account_id"], row["gateway_id"])
                if key in room:
                    if room[key] == 0:
                        continue
                    room[key] -= 1
                rows.append([row[c] for c in COLUMNS])
            await conn.executemany(INSERT, rows)
            self.written += len(rows)
            for (account, gateway), retention in by_gateway.items():
                if retention and retention.get("strategy") == "DELETE_OLDEST":
                    await conn.execute(
                        """
                        DELETE FROM request_logs WHERE id IN (
                            SELECT id FROM request_logs WHERE account_id = $1 AND gateway_id = $2
                             ORDER BY created_at DESC, id DESC OFFSET $3)
                        """,
                        account, gateway, retention["max_rows"],
                    )

