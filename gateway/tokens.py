"""Gateway tokens (the `gateway_tokens` table): minted here, stored only as SHA-256 hashes, and read through one
store by both the admin API (pages, create, revoke) and GatewayAuth (is this token one of the gateway's?).

Each instance caches a gateway's hashes until a NOTIFY says they changed (revoking a token applies on every
instance within a second); a write through the store drops this instance's cache at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from gateway.config_cache import ConfigCache
from gateway.db import Database
from gateway.gateways import GatewayStore, cache_invalidator

TOKEN_PREFIX = "sgk_"  # every gateway token starts so: recognised in a provider key's place without a query


def new_gateway_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """A token as the admin API lists it: never the secret."""

    id: uuid.UUID
    name: str
    created_at: datetime

    @classmethod
    def of(cls, row: asyncpg.Record) -> TokenRecord:
        return cls(row["id"], row["name"], row["created_at"])


class TokenStore:
    def __init__(self, db: Database, gateways: GatewayStore) -> None:
        self.db = db
        self._cache: ConfigCache[tuple[str, str], frozenset[str]] = gateways.new_cache()
        gateways.on_change(cache_invalidator(self._cache))

    async def digests(self, account: str, gateway: str) -> frozenset[str]:
        async def load() -> frozenset[str]:
            rows = await self.db.pool.fetch(
                "SELECT token_sha256 FROM gateway_tokens WHERE account_id = $1 AND gateway_id = $2", account, gateway)
            return frozenset(r["token_sha256"] for r in rows)

        return await self._cache.get((account, gateway), load)

    async def valid(self, account: str, gateway: str, token: str) -> bool:
        digest = token_digest(token)
        return any(hmac.compare_digest(digest, d) for d in await self.digests(account, gateway))

    def invalidate(self) -> None:
        self._cache.forget()

    # -- the table, for the admin API ------------------------------------------------------------------------

    async def page(self, account: str, gateway: str, after: tuple[datetime, uuid.UUID] | None,
                   limit: int) -> list[TokenRecord]:
        """By (created_at, id): those after `after`, at most `limit`."""
        rows = await self.db.pool.fetch(
            "SELECT id, name, created_at FROM gateway_tokens WHERE account_id = $1 AND gateway_id = $2 "
            "AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid)) ORDER BY created_at, id LIMIT $5",
            account, gateway, *(after or (None, None)), limit)
        return [TokenRecord.of(r) for r in rows]

    async def create(self, account: str, gateway: str, name: str) -> tuple[TokenRecord, str]:
        """A new token: its record, and the token itself (shown this once; only its hash is stored)."""
        token = new_gateway_token()
        row = await self.db.pool.fetchrow(
            "INSERT INTO gateway_tokens (account_id, gateway_id, name, token_sha256) VALUES ($1, $2, $3, $4) "
            "RETURNING id, name, created_at", account, gateway, name, token_digest(token))
        self.invalidate()
        return TokenRecord.of(row), token

    async def delete(self, account: str, gateway: str, token_id: str) -> bool:
        """Revoke; False when the gateway has no token of that id (an id that is not a UUID included)."""
        try:
            deleted = await self.db.pool.fetchval(
                "DELETE FROM gateway_tokens WHERE account_id = $1 AND gateway_id = $2 AND id = $3::uuid RETURNING id",
                account, gateway, token_id)
        except asyncpg.DataError:
            return False
        if deleted is None:
            return False
        self.invalidate()
        return True
