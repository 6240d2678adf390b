"""The per-instance cache behind every configuration store (gateways, keys, prices, rules, policies, tokens).

Entries are dropped on every `spendgate_config` notification, and all of them while the NOTIFY listener has no
connection (a change could be missed), so by default a database outage empties the caches and every request
that needs configuration fails closed with 503 (gateway/middleware/server_errors.py).

With `fail_open` (`SPENDGATE_DB_UNAVAILABLE=fail_open_byok`), the last value loaded for each key is also kept
apart and served while the database is unreachable. What that lets through is decided later, where the billing
mode is known: a request on its own provider key (BYOK) that needs no reservation (no rule applies, or only
`monitor` rules) is forwarded and its log row waits in the writer's queue; unified billing and blocking rules
still need the database for their hold or reservation and still answer 503.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from gateway.db import unavailable

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

log = logging.getLogger("spendgate.config")


class ConfigCache(Generic[K, V]):
    def __init__(self, *, fail_open: bool = False) -> None:
        self.fail_open = fail_open
        self._fresh: dict[K, V] = {}
        self._last_known: dict[K, V] = {}
        # bumped by every clear: a load that started before a change must not store what it read
        self._generation = 0

    def peek(self, key: K) -> V | None:
        return self._fresh.get(key)

    def put(self, key: K, value: V) -> None:
        self._fresh[key] = value
        if self.fail_open:
            self._last_known[key] = value

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        cached = self._fresh.get(key)
        if cached is not None:
            return cached
        generation = self._generation
        try:
            value = await load()
        except Exception as exc:
            if self.fail_open and unavailable(exc) and key in self._last_known:
                log.warning("database unavailable: serving the last known configuration for %s", key)
                return self._last_known[key]
            raise
        if generation == self._generation:  # else a change arrived while loading: serve it once, keep nothing
            self.put(key, value)
        return value

    def clear(self) -> None:
        self._generation += 1
        self._fresh.clear()

    def forget(self) -> None:
        """Drop the last-known values too (the data changed: what was known is no longer true)."""
        self.clear()
        self._last_known.clear()
