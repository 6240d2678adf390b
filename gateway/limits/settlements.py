"""Settlements: every reservation this instance opened, until it is settled — through a database outage and
through a shutdown.

SpendLimits registers a reservation when it is granted (`opened`) and settles it when the call ends (`settle`).
A settlement the database refuses because it is unreachable is not dropped: it waits in `waiting` and the
background task (`retry_waiting`, every second) tries again with the cost and time of the original settlement.
`limits.settle` resolves a reservation at most once, so a retry that races another settlement (or the sweeper)
changes nothing twice; one that comes after the sweeper expired the reservation is recorded as `late`
(migration 0017), so the cost of a call that happened is never lost.

On shutdown (`drain`, called by Services.stop before the pool closes), whatever is still open — calls the server
cancelled at its graceful-shutdown deadline — is settled with what the call cost so far (the planner's rule: usage
if any came, else the full reservation once a 2xx answer started, else nothing), and the waiting settlements are
retried until the deadline. Only a process that dies without running this (kill -9) leaves reservations to the
sweeper, which expires them at their TTL (pending goes back, the credit hold is voided).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.db import unavailable
from gateway.limits.reservations import Limits

log = logging.getLogger("spendgate.limits")


@dataclass(frozen=True)
class Pending:
    actual_nano: int
    at: datetime
    attempts: int = 0
    tokens: int | None = None  # the tokens the call used, for rate limits counting tokens (None: the bound)


class Settlements:
    def __init__(self, limits: Limits, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.limits = limits
        self.clock = clock
        self.open: dict[uuid.UUID, Callable[[], int]] = {}  # reservation -> its actual cost so far
        self.waiting: dict[uuid.UUID, Pending] = {}
        self.settling = 0  # settlements on their way to the database (in a batch, or waiting for one)
        self.settled = 0

    @property
    def unsettled(self) -> int:
        """Reservations this instance opened whose settlement has not committed: open calls, settlements on their
        way, and those waiting for the database."""
        return len(self.open) + self.settling + len(self.waiting)

    def opened(self, reservation_id: uuid.UUID, actual_nano: Callable[[], int]) -> None:
        self.open[reservation_id] = actual_nano

    async def settle(self, reservation_id: uuid.UUID, actual_nano: int, at: datetime | None = None, *,
                     tokens: int | None = None) -> None:
        """Settle now; if the database is unreachable, keep it for `retry_waiting`. Never raises."""
        self.open.pop(reservation_id, None)
        self.settling += 1
        try:
            await self._attempt(reservation_id, Pending(actual_nano, at or self.clock(), tokens=tokens))
        finally:
            self.settling -= 1

    async def _attempt(self, reservation_id: uuid.UUID, pending: Pending) -> bool:
        try:
            result = await self.limits.settle(reservation_id, pending.actual_nano, now=pending.at,
                                              tokens=pending.tokens)
        except Exception as exc:
            attempts = pending.attempts + 1
            if unavailable(exc) or attempts < 5:
                if reservation_id not in self.waiting:
                    log.warning("settlement of reservation %s failed (%s); it will be retried", reservation_id,
                                type(exc).__name__)
                self.waiting[reservation_id] = Pending(pending.actual_nano, pending.at, attempts, pending.tokens)
            else:
                log.exception("settlement of reservation %s failed %d times; the sweeper will expire it",
                              reservation_id, attempts)
                self.waiting.pop(reservation_id, None)
            return False
        self.waiting.pop(reservation_id, None)
        self.settled += 1
        if not result.ok:
            log.warning("reservation %s not settled: %s", reservation_id, result.reason)
        return True

    async def retry_waiting(self) -> None:
        for reservation_id, pending in list(self.waiting.items()):
            if not await self._attempt(reservation_id, pending):
                return  # still unreachable: try the rest next round

    async def drain(self, deadline_s: float = 10.0) -> int:
        """Settle everything still open or waiting, until the deadline. Returns how many remain unsettled."""
        end = time.monotonic() + deadline_s
        while self.open:  # cancelled calls are running their own `finally` settlement: give them a moment
            if time.monotonic() >= end - deadline_s / 2:
                break
            await asyncio.sleep(0.05)
        # all at once, so that they go in batches (one after the other, each was a batch of one), within the deadline
        opened = {asyncio.create_task(self.settle(reservation_id, _safe(actual))): reservation_id
                  for reservation_id, actual in list(self.open.items())}
        cut_off: set[uuid.UUID] = set()
        if opened:
            _, unfinished = await asyncio.wait(opened, timeout=max(0.0, end - time.monotonic()))
            for task in unfinished:
                task.cancel()
                cut_off.add(opened[task])
        while self.waiting and time.monotonic() < end:
            await self.retry_waiting()
            if self.waiting:
                await asyncio.sleep(0.2)
        left = len(cut_off | self.open.keys() | self.waiting.keys())
        if left:
            log.error("%d reservations left unsettled at shutdown; the sweeper will expire them", left)
        return left


def _safe(actual: Callable[[], int]) -> int:
    try:
        return actual()
    except Exception:
        log.exception("actual cost unknown at shutdown; settled as 0")
        return 0
