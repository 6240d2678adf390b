"""Single flight within one instance: of the requests that miss the same key at the same time, one (the leader)
fills it; the others wait for what it got.

The leader resolves its flight with the stored `Entry`, or with None when its answer could not be stored (an
error, a cut stream, a client that left): the waiting requests are then served on their own, each with its own
call (one failure is not handed to everyone, and a refusal meant for the leader is not replayed to the others).
Across instances the cache table does the same job (gateway/cache/store.py: a claimed row).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from dataclasses import dataclass, field

from gateway.cache.store import Entry


@dataclass
class Flight:
    """One key being filled. `result` is set once, by the leader."""

    result: asyncio.Future[Entry | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def land(self, entry: Entry | None) -> None:
        if not self.result.done():
            self.result.set_result(entry)

    async def wait(self) -> Entry | None:
        # shielded: a waiting request that is cancelled must not cancel the leader's result for the others
        return await asyncio.shield(self.result)


class SingleFlight:
    def __init__(self) -> None:
        self._flights: dict[Hashable, Flight] = {}

    def join(self, key: Hashable) -> tuple[Flight, bool]:
        """The flight for `key`, and whether the caller leads it (it must then `finish` it, on every path)."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight, False
        flight = self._flights[key] = Flight()
        return flight, True

    def finish(self, key: Hashable, flight: Flight, entry: Entry | None) -> None:
        flight.land(entry)
        if self._flights.get(key) is flight:
            del self._flights[key]

    def __len__(self) -> int:
        return len(self._flights)
