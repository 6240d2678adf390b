"""A background worker that runs one action every few seconds, from `start()` to `stop()`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.db import log_failure

log = logging.getLogger("spendgate")


class Periodic:
    """`action` every `interval` seconds in a task of its own; a failure is logged (as `what`) and the loop goes
    on. `wait_first`: sleep one interval before the first run."""

    def __init__(self, name: str, what: str, action: Callable[[], Awaitable[object]], interval: float, *,
                 wait_first: bool = False) -> None:
        self.name = name
        self.what = what
        self.action = action
        self.interval = interval
        self.wait_first = wait_first
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None

    async def _loop(self) -> None:
        if self.wait_first:
            await asyncio.sleep(self.interval)
        while True:
            try:
                await self.action()
            except Exception as exc:
                log_failure(log, self.what, exc)
            await asyncio.sleep(self.interval)
