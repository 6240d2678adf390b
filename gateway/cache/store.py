"""CacheStore: the response cache's table (`cache.entries`, migration 0020), shared by every instance.

One row per (account, gateway, key), in one of two states:

- ready: a stored answer (`Entry`), served until `expires_at`;
- filling: an instance claimed the key (`claim`) and is calling the provider; other instances that miss the same
  key meanwhile see `FILLING` and wait for it (`lookup` again) instead of calling the provider themselves. The
  claim lasts `lease`, and the filling instance renews it every third of a lease while the answer is still
  coming (`renew`: a long stream keeps its claim): an instance that died while filling holds the key no longer
  than a lease.

`fill` stores the answer in the row its own claim made, and nothing when the claim was lost (purged, or expired and
claimed by another instance), then evicts the gateway's oldest entries past its size bound (one round trip).
`abandon` gives a claim up (the answer could not be stored). Times are the database's, so instances with skewed
clocks agree on what has expired.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from gateway.db import Database, rows_affected

FILLING: Final = "filling"
SWEEP_BATCH = 1000


@dataclass(frozen=True)
class Entry:
    """A stored answer: its status, the headers replayed with it, the body as the client received it (a stream:
    its SSE bytes, whole), and the original call's cost (None: unpriced)."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    cost_nano: int | None

    def headers_json(self) -> list[list[str]]:
        return [list(pair) for pair in self.headers]


_LOOKUP = ("SELECT ready, status, headers, body, cost_nano FROM cache.entries "
           "WHERE account_id = $1 AND gateway_id = $2 AND key = $3 AND expires_at > now()")
# a new row, or a row whose answer or claim has expired; a live row (ready or being filled) is left alone
_CLAIM = ("INSERT INTO cache.entries AS e (account_id, gateway_id, key, fill_id, expires_at) "
          "VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) "
          "ON CONFLICT (account_id, gateway_id, key) DO UPDATE SET ready = false, fill_id = excluded.fill_id, "
          "status = NULL, headers = NULL, body = NULL, size = 0, cost_nano = NULL, created_at = now(), "
          "expires_at = excluded.expires_at WHERE e.expires_at <= now() "
          "RETURNING true")
_SWEEP = ("DELETE FROM cache.entries e USING (SELECT account_id, gateway_id, key FROM cache.entries "
          "WHERE expires_at <= coalesce($1::timestamptz, now()) ORDER BY expires_at LIMIT $2 "
          "FOR UPDATE SKIP LOCKED) due "
          "WHERE e.account_id = due.account_id AND e.gateway_id = due.gateway_id AND e.key = due.key")


class CacheStore:
    def __init__(self, db: Database, *, lease: timedelta = timedelta(seconds=60)) -> None:
        self.db = db
        self.lease = lease

    async def lookup(self, account: str, gateway: str, key: bytes) -> Entry | str | None:
        """The live entry; FILLING when an instance is filling it; None when there is none (or it expired)."""
        row = await self.db.pool.fetchrow(_LOOKUP, account, gateway, key)
        if row is None:
            return None
        if not row["ready"]:
            return FILLING
        headers = tuple((str(name), str(value)) for name, value in row["headers"])
        return Entry(row["status"], headers, bytes(row["body"]), row["cost_nano"])

    async def claim(self, account: str, gateway: str, key: bytes, fill_id: uuid.UUID) -> bool:
        """Claim the key for filling; False when a live row (an answer or another claim) holds it."""
        claimed = await self.db.pool.fetchval(_CLAIM, account, gateway, key, fill_id, self.lease.total_seconds())
        return bool(claimed)

    async def fill(self, account: str, gateway: str, key: bytes, fill_id: uuid.UUID, entry: Entry, ttl_s: int,
                   max_bytes: int | None) -> int | None:
        """Store the answer under this claim. The number of old entries evicted to keep the gateway within
        `max_bytes`; None when the claim was lost (nothing stored)."""
        evicted = await self.db.pool.fetchval(
            "SELECT cache.fill($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", account, gateway, key, fill_id,
            entry.status, entry.headers_json(), entry.body, entry.cost_nano, float(ttl_s), max_bytes)
        return None if evicted < 0 else int(evicted)

    async def renew(self, account: str, gateway: str, key: bytes, fill_id: uuid.UUID) -> bool:
        """Extend this claim by a lease from now (the answer is still coming: a long stream); False when it was
        lost (purged, or expired and claimed by another instance)."""
        status = await self.db.pool.execute(
            "UPDATE cache.entries SET expires_at = now() + make_interval(secs => $5) WHERE account_id = $1 "
            "AND gateway_id = $2 AND key = $3 AND fill_id = $4 AND NOT ready",
            account, gateway, key, fill_id, self.lease.total_seconds())
        return rows_affected(status) == 1

    async def abandon(self, account: str, gateway: str, key: bytes, fill_id: uuid.UUID) -> None:
        await self.db.pool.execute(
            "DELETE FROM cache.entries WHERE account_id = $1 AND gateway_id = $2 AND key = $3 AND fill_id = $4 "
            "AND NOT ready", account, gateway, key, fill_id)

    async def purge(self, account: str, gateway: str) -> int:
        """Delete every entry of the gateway (claims in progress too: their answers will not be stored)."""
        status = await self.db.pool.execute(
            "DELETE FROM cache.entries WHERE account_id = $1 AND gateway_id = $2", account, gateway)
        return rows_affected(status)

    async def sweep(self, *, now: datetime | None = None) -> int:
        """Delete expired entries and abandoned claims, a batch per transaction (SKIP LOCKED: several instances
        sweeping never wait for each other). `now`: the database's clock unless given."""
        swept = 0
        while True:
            status = await self.db.pool.execute(_SWEEP, now, SWEEP_BATCH)
            deleted = rows_affected(status)
            swept += deleted
            if deleted < SWEEP_BATCH:
                return swept

    async def usage(self, account: str, gateway: str) -> tuple[int, int]:
        """(ready entries, bytes counted) of the gateway."""
        row = await self.db.pool.fetchrow(
            "SELECT (SELECT count(*) FROM cache.entries WHERE account_id = $1 AND gateway_id = $2 AND ready) AS n, "
            "(SELECT bytes FROM cache.usage WHERE account_id = $1 AND gateway_id = $2) AS bytes", account, gateway)
        return int(row["n"]), int(row["bytes"] or 0)
