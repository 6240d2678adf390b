"""The waiting helper itself: it returns as soon as the check passes, and fails with what it last saw."""

from __future__ import annotations

import time

import pytest

from tests.eventually import eventually, eventually_sync


async def test_returns_the_first_accepted_value() -> None:
    seen = iter(range(100))
    assert await eventually(lambda: next(seen), until=lambda n: n >= 3, every=0) == 3


async def test_awaits_async_checks_and_retries_assertions() -> None:
    calls = []

    async def check() -> str:
        calls.append(1)
        assert len(calls) >= 3, "not yet"
        return "done"

    assert await eventually(check, every=0) == "done"
    assert len(calls) == 3


async def test_gives_up_with_the_last_failure() -> None:
    def check() -> None:
        raise AssertionError("still 0.07")

    with pytest.raises(AssertionError, match=r"still 0\.07"):
        await eventually(check, within=0.05, every=0.01)
    with pytest.raises(AssertionError, match="last seen: 0"):
        await eventually(lambda: 0, within=0.05, every=0.01, what="the balance")


def test_sync_variant() -> None:
    start = time.monotonic()
    assert eventually_sync(lambda: time.monotonic() - start > 0.03, every=0.01)
    with pytest.raises(AssertionError, match="rows not reached"):
        eventually_sync(lambda: [], within=0.03, every=0.01, what="rows")
