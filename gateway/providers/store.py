"""Per-gateway provider configuration: stored provider keys, custom providers, price overrides.

Each table has one store here, which both the admin API (pages, writes) and the router (through `ProviderStore`,
a per-instance cache of a gateway's whole configuration that NOTIFY invalidates) read it through. A write drops
this instance's cache at once; the table's NOTIFY trigger drops every other instance's.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

import asyncpg

from gateway.config_cache import ConfigCache
from gateway.db import Database
from gateway.gateways import GatewayStore, cache_invalidator
from gateway.pricing import PRICE_FIELDS, PriceOverride


@dataclass(frozen=True)
class ProviderConfigSnapshot:
    keys: dict[tuple[str, str], str] = field(default_factory=dict)  # (provider, alias) -> secret
    custom: dict[str, str] = field(default_factory=dict)  # slug -> base URL
    prices: dict[tuple[str, str], PriceOverride] = field(default_factory=dict)  # (provider, model) -> override

    def price(self, provider: str, model: str | None) -> PriceOverride | None:
        if model is None:
            return None
        return self.prices.get((provider, model)) or self.prices.get(("*", model))


# -- provider keys ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredKey:
    """A stored provider key as the admin API shows it: never the key, only its last four characters."""

    id: uuid.UUID
    provider: str
    alias: str
    last4: str
    created_at: datetime

    @classmethod
    def of(cls, row: asyncpg.Record) -> StoredKey:
        return cls(row["id"], row["provider"], row["alias"], row["secret"][-4:], row["created_at"])


class ProviderKeys:
    """The `provider_keys` table: keys stored for a gateway under (provider, alias)."""

    def __init__(self, db: Database, changed: Callable[[], None]) -> None:
        self.db = db
        self._changed = changed

    async def secrets(self, conn: asyncpg.Connection, account: str, gateway: str) -> dict[tuple[str, str], str]:
        rows = await conn.fetch(
            "SELECT provider, alias, secret FROM provider_keys WHERE account_id = $1 AND gateway_id = $2",
            account, gateway,
        )
        return {(r["provider"], r["alias"]): r["secret"] for r in rows}

    async def page(self, account: str, gateway: str, after: tuple[str, str] | None, limit: int) -> list[StoredKey]:
        """By (provider, alias): those after `after`, at most `limit`."""
        rows = await self.db.pool.fetch(
            "SELECT * FROM provider_keys WHERE account_id = $1 AND gateway_id = $2 "
            "AND ($3::text IS NULL OR (provider, alias) > ($3, $4::text)) ORDER BY provider, alias LIMIT $5",
            account, gateway, *(after or (None, None)), limit,
        )
        return [StoredKey.of(r) for r in rows]

    async def add(self, account: str, gateway: str, provider: str, alias: str, secret: str) -> StoredKey | None:
        """The stored key; None when the gateway has a key of that provider under that alias already."""
        try:
            row = await self.db.pool.fetchrow(
                "INSERT INTO provider_keys (account_id, gateway_id, provider, alias, secret) "
                "VALUES ($1, $2, $3, $4, $5) RETURNING *",
                account, gateway, provider, alias, secret,
            )
        except asyncpg.UniqueViolationError:
            return None
        self._changed()
        return StoredKey.of(row)

    async def delete(self, account: str, gateway: str, key_id: str) -> bool:
        """False when the gateway has no key of that id (an id that is not a UUID included)."""
        try:
            deleted = await self.db.pool.fetchval(
                "DELETE FROM provider_keys WHERE account_id = $1 AND gateway_id = $2 AND id = $3::uuid RETURNING id",
                account, gateway, key_id,
            )
        except asyncpg.DataError:
            return False
        if deleted is None:
            return False
        self._changed()
        return True


# -- custom providers ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomProvider:
    slug: str
    base_url: str
    created_at: datetime

    @classmethod
    def of(cls, row: asyncpg.Record) -> CustomProvider:
        return cls(row["slug"], row["base_url"], row["created_at"])


class CustomProviders:
    """The `custom_providers` table: OpenAI-compatible servers a gateway serves as `custom-{slug}`."""

    def __init__(self, db: Database, changed: Callable[[], None]) -> None:
        self.db = db
        self._changed = changed

    async def base_urls(self, conn: asyncpg.Connection, account: str, gateway: str) -> dict[str, str]:
        rows = await conn.fetch(
            "SELECT slug, base_url FROM custom_providers WHERE account_id = $1 AND gateway_id = $2",
            account, gateway,
        )
        return {r["slug"]: r["base_url"].rstrip("/") for r in rows}

    async def page(self, account: str, gateway: str, after: str | None, limit: int) -> list[CustomProvider]:
        """By slug: those after `after`, at most `limit`."""
        rows = await self.db.pool.fetch(
            "SELECT slug, base_url, created_at FROM custom_providers WHERE account_id = $1 AND gateway_id = $2 "
            "AND ($3::text IS NULL OR slug > $3) ORDER BY slug LIMIT $4", account, gateway, after, limit,
        )
        return [CustomProvider.of(r) for r in rows]

    async def add(self, account: str, gateway: str, slug: str, base_url: str) -> CustomProvider | None:
        """The registered provider (its base URL without a trailing slash); None when the slug is taken."""
        try:
            row = await self.db.pool.fetchrow(
                "INSERT INTO custom_providers (account_id, gateway_id, slug, base_url) VALUES ($1, $2, $3, $4) "
                "RETURNING slug, base_url, created_at",
                account, gateway, slug, base_url.rstrip("/"),
            )
        except asyncpg.UniqueViolationError:
            return None
        self._changed()
        return CustomProvider.of(row)

    async def delete(self, account: str, gateway: str, slug: str) -> bool:
        deleted = await self.db.pool.fetchval(
            "DELETE FROM custom_providers WHERE account_id = $1 AND gateway_id = $2 AND slug = $3 RETURNING slug",
            account, gateway, slug,
        )
        if deleted is None:
            return False
        self._changed()
        return True


# -- price overrides -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Price:
    """One price override row: `provider` is a provider or `*` (any provider)."""

    provider: str
    model: str
    values: tuple[Decimal | None, ...]  # in PRICE_FIELDS order

    @classmethod
    def of(cls, row: asyncpg.Record) -> Price:
        return cls(row["provider"], row["model"], tuple(row[f] for f in PRICE_FIELDS))


class PriceOverrides:
    """The `price_overrides` table: a gateway's prices per (provider, model), replaced as a whole."""

    def __init__(self, db: Database, changed: Callable[[], None]) -> None:
        self.db = db
        self._changed = changed

    async def overrides(self, conn: asyncpg.Connection, account: str,
                        gateway: str) -> dict[tuple[str, str], PriceOverride]:
        rows = await conn.fetch(
            "SELECT * FROM price_overrides WHERE account_id = $1 AND gateway_id = $2", account, gateway)
        return {(r["provider"], r["model"]): PriceOverride(**{f: r[f] for f in PRICE_FIELDS}) for r in rows}

    async def page(self, account: str, gateway: str, after: tuple[str, str] | None, limit: int) -> list[Price]:
        """By (provider, model): those after `after`, at most `limit`."""
        rows = await self.db.pool.fetch(
            "SELECT * FROM price_overrides WHERE account_id = $1 AND gateway_id = $2 "
            "AND ($3::text IS NULL OR (provider, model) > ($3, $4::text)) ORDER BY provider, model LIMIT $5",
            account, gateway, *(after or (None, None)), limit,
        )
        return [Price.of(r) for r in rows]

    async def replace(self, account: str, gateway: str, prices: Sequence[Price]) -> None:
        """The gateway's prices become `prices`, in one transaction."""
        async with self.db.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM price_overrides WHERE account_id = $1 AND gateway_id = $2",
                               account, gateway)
            await conn.executemany(
                f"INSERT INTO price_overrides (account_id, gateway_id, provider, model, {', '.join(PRICE_FIELDS)}) "
                f"VALUES ({', '.join(f'${i}' for i in range(1, len(PRICE_FIELDS) + 5))})",
                [(account, gateway, p.provider, p.model, *p.values) for p in prices],
            )
        self._changed()


# -- the router's view -----------------------------------------------------------------------------------------


class ProviderStore:
    """A gateway's whole provider configuration, read on the hot path from a cache that NOTIFY invalidates;
    `keys`, `custom` and `prices` are the tables' stores (writes through them drop the cache)."""

    def __init__(self, db: Database, gateways: GatewayStore | None = None) -> None:
        self.db = db
        self._cache: ConfigCache[tuple[str, str], ProviderConfigSnapshot] = (
            gateways.new_cache() if gateways is not None else ConfigCache())
        if gateways is not None:
            gateways.on_change(cache_invalidator(self._cache))
        self.keys = ProviderKeys(db, self.invalidate)
        self.custom = CustomProviders(db, self.invalidate)
        self.prices = PriceOverrides(db, self.invalidate)

    async def get(self, account: str, gateway: str) -> ProviderConfigSnapshot:
        key = (account, gateway)
        snapshot = self._cache.peek(key)
        if snapshot is not None:
            return snapshot
        return await self._cache.get(key, lambda: self._load(account, gateway))

    async def _load(self, account: str, gateway: str) -> ProviderConfigSnapshot:
        async with self.db.pool.acquire() as conn:
            return ProviderConfigSnapshot(
                await self.keys.secrets(conn, account, gateway),
                await self.custom.base_urls(conn, account, gateway),
                await self.prices.overrides(conn, account, gateway),
            )

    def invalidate(self) -> None:
        self._cache.forget()
