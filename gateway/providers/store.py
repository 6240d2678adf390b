"""Per-gateway provider configuration, read on the hot path from a cache that NOTIFY invalidates."""

from __future__ import annotations

from dataclasses import dataclass, field

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


class ProviderStore:
    def __init__(self, db: Database, gateways: GatewayStore | None = None) -> None:
        self.db = db
        self._cache: ConfigCache[tuple[str, str], ProviderConfigSnapshot] = (
            gateways.new_cache() if gateways is not None else ConfigCache())
        if gateways is not None:
            gateways.on_change(cache_invalidator(self._cache))

    async def get(self, account: str, gateway: str) -> ProviderConfigSnapshot:
        key = (account, gateway)
        snapshot = self._cache.peek(key)
        if snapshot is not None:
            return snapshot
        return await self._cache.get(key, lambda: self._load(account, gateway))

    async def _load(self, account: str, gateway: str) -> ProviderConfigSnapshot:
        async with self.db.pool.acquire() as conn:
            keys = await conn.fetch(
                "SELECT provider, alias, secret FROM provider_keys WHERE account_id = $1 AND gateway_id = $2",
                account, gateway,
            )
            custom = await conn.fetch(
                "SELECT slug, base_url FROM custom_providers WHERE account_id = $1 AND gateway_id = $2",
                account, gateway,
            )
            prices = await conn.fetch(
                "SELECT * FROM price_overrides WHERE account_id = $1 AND gateway_id = $2", account, gateway
            )
        return ProviderConfigSnapshot(
            {(r["provider"], r["alias"]): r["secret"] for r in keys},
            {r["slug"]: r["base_url"].rstrip("/") for r in custom},
            {(r["provider"], r["model"]): PriceOverride(**{f: r[f] for f in PRICE_FIELDS}) for r in prices},
        )

    def invalidate(self) -> None:
        self._cache.forget()
