"""Wait for something the gateway does in the background (a log row written, a settlement committed, an alert
delivered), instead of sleeping for a guessed time.

    row = await eventually(lambda: fetch_row(log_id))              # async test, awaitable or plain check
    rows = eventually_sync(lambda: admin_logs(account), until=lambda r: len(r) >= 2)   # sync test

A check passes when it returns a truthy value (or, with `until=`, a value `until` accepts) without raising
AssertionError; that value is returned. Until then it is called again every `every` seconds; after `within`
seconds the last AssertionError is raised again, or a new one saying what was last seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")

WITHIN = 10.0
EVERY = 0.02


def _accepted(value: Any, until: Callable[[Any], bool] | None) -> bool:
    return bool(until(value)) if until is not None else bool(value)


def _timed_out(what: str, within: float, last: Any, failure: AssertionError | None) -> AssertionError:
    if failure is not None:
        return failure
    return AssertionError(f"{what or 'condition'} not reached within {within} s; last seen: {last!r}")


async def eventually(check: Callable[[], T | Awaitable[T]], *, until: Callable[[T], bool] | None = None,
                     within: float = WITHIN, every: float = EVERY, blocking: bool = False, what: str = "") -> T:
    """In an async test. `blocking=True` runs a check that blocks (a sync HTTP call) in a thread."""
    deadline = time.monotonic() + within
    last: Any = None
    failure: AssertionError | None = None
    while True:
        try:
            value = await asyncio.to_thread(check) if blocking else check()
            if inspect.isawaitable(value):
                value = await value
            last, failure = value, None
            if _accepted(value, until):
                return cast(T, value)
        except AssertionError as exc:
            failure = exc
        if time.monotonic() >= deadline:
            raise _timed_out(what, within, last, failure)
        await asyncio.sleep(every)


def eventually_sync(check: Callable[[], T], *, until: Callable[[T], bool] | None = None, within: float = WITHIN,
                    every: float = EVERY, what: str = "") -> T:
    """In a sync test (the gateway runs in another thread or process)."""
    deadline = time.monotonic() + within
    last: Any = None
    failure: AssertionError | None = None
    while True:
        try:
            value = check()
            last, failure = value, None
            if _accepted(value, until):
                return value
        except AssertionError as exc:
            failure = exc
        if time.monotonic() >= deadline:
            raise _timed_out(what, within, last, failure)
        time.sleep(every)
