"""Rules and policies of each gateway, read on the hot path from a per-instance cache.

The cache is dropped on every `spendgate_config` notification (the rules and policies tables notify through
`notify_config_change()`), so an admin change applies on every instance within a second.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from gateway.config_cache import ConfigCache
from gateway.db import Database
from gateway.errors import TooManyRules
from gateway.gateways import GatewayStore, cache_invalidator
from gateway.limits.buckets import bucket_remaining, bucket_status
from gateway.limits.policies import Policy
from gateway.limits.rules import MAX_RULES_PER_GATEWAY, Rule, parse_rule

# bucket reads live in gateway/limits/buckets.py; the admin API (gateway/admin/limits.py) imports them from here
__all__ = ["LimitStore", "TooManyRules", "bucket_remaining", "bucket_status"]


class LimitStore:
    def __init__(self, db: Database, gateways: GatewayStore | None = None) -> None:
        self.db = db
        self._rules: ConfigCache[tuple[str, str], list[Rule]] = gateways.new_cache() if gateways else ConfigCache()
        self._policies: ConfigCache[tuple[str, str], list[Policy]] = (
            gateways.new_cache() if gateways else ConfigCache())
        if gateways is not None:
            gateways.on_change(cache_invalidator(self._rules))
            gateways.on_change(cache_invalidator(self._policies))

    def invalidate(self) -> None:
        self._rules.forget()
        self._policies.forget()

    async def rules(self, account: str, gateway: str) -> list[Rule]:
        key = (account, gateway)
        cached = self._rules.peek(key)
        if cached is not None:
            return cached

        async def load() -> list[Rule]:
            rows = await self.db.pool.fetch(
                "SELECT id, spec FROM limits.rules WHERE account_id = $1 AND gateway_id = $2 ORDER BY created_at, id",
                account, gateway,
            )
            return [parse_rule(str(r["id"]), r["spec"]) for r in rows]

        return await self._rules.get(key, load)

    async def policies(self, account: str, gateway: str) -> list[Policy]:
        key = (account, gateway)
        cached = self._policies.peek(key)
        if cached is not None:
            return cached

        async def load() -> list[Policy]:
            rows = await self.db.pool.fetch(
                'SELECT id, "group", models FROM limits.policies WHERE account_id = $1 AND gateway_id = $2',
                account, gateway,
            )
            return [Policy(str(r["id"]), r["group"], tuple(r["models"])) for r in rows]

        return await self._policies.get(key, load)

    # -- pages (admin API: ordered by creation, then id; `after` is the last (created_at, id) of the previous page) --

    async def rules_page(self, account: str, gateway: str, after: tuple[datetime, uuid.UUID] | None,
                         limit: int) -> list[tuple[datetime, Rule]]:
        rows = await self.db.pool.fetch(
            "SELECT id, spec, created_at FROM limits.rules WHERE account_id = $1 AND gateway_id = $2 "
            "AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid)) ORDER BY created_at, id LIMIT $5",
            account, gateway, *(after or (None, None)), limit,
        )
        return [(r["created_at"], parse_rule(str(r["id"]), r["spec"])) for r in rows]

    async def policies_page(self, account: str, gateway: str, after: tuple[datetime, uuid.UUID] | None,
                            limit: int) -> list[tuple[datetime, Policy]]:
        rows = await self.db.pool.fetch(
            'SELECT id, "group", models, created_at FROM limits.policies WHERE account_id = $1 AND gateway_id = $2 '
            "AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid)) ORDER BY created_at, id LIMIT $5",
            account, gateway, *(after or (None, None)), limit,
        )
        return [(r["created_at"], Policy(str(r["id"]), r["group"], tuple(r["models"]))) for r in rows]

    # -- writes (admin API and CLI) --

    async def create_rule(self, account: str, gateway: str, spec: dict[str, Any]) -> Rule:
        rule_id = uuid.uuid4()
        parse_rule(str(rule_id), spec)
        async with self.db.pool.acquire() as conn, conn.transaction():
            # serialise rule creation per gateway so the limit of 20 holds under concurrent POSTs
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"rules:{account}/{gateway}")
            count = await conn.fetchval(
                "SELECT count(*) FROM limits.rules WHERE account_id = $1 AND gateway_id = $2", account, gateway)
            if count >= MAX_RULES_PER_GATEWAY:
                raise TooManyRules("rule", f"a gateway has at most {MAX_RULES_PER_GATEWAY} rules")
            await conn.execute(
                "INSERT INTO limits.rules (id, account_id, gateway_id, spec) VALUES ($1, $2, $3, $4)",
                rule_id, account, gateway, spec,
            )
        self.invalidate()
        return parse_rule(str(rule_id), spec)

    async def replace_rule(self, account: str, gateway: str, rule_id: str, spec: dict[str, Any]) -> Rule | None:
        rule = parse_rule(rule_id, spec)
        status = await self.db.pool.execute(
            "UPDATE limits.rules SET spec = $4, updated_at = now() "
            "WHERE account_id = $1 AND gateway_id = $2 AND id = $3",
            account, gateway, uuid.UUID(rule_id), spec,
        )
        self.invalidate()
        return rule if status.endswith(" 1") else None

    async def delete_rule(self, account: str, gateway: str, rule_id: str) -> bool:
        status = await self.db.pool.execute(
            "DELETE FROM limits.rules WHERE account_id = $1 AND gateway_id = $2 AND id = $3",
            account, gateway, uuid.UUID(rule_id),
        )
        self.invalidate()
        return bool(status.endswith(" 1"))

    async def create_policy(self, account: str, gateway: str, group: str, models: tuple[str, ...]) -> Policy:
        row = await self.db.pool.fetchrow(
            'INSERT INTO limits.policies (account_id, gateway_id, "group", models) VALUES ($1, $2, $3, $4) '
            "RETURNING id", account, gateway, group, list(models),
        )
        self.invalidate()
        return Policy(str(row["id"]), group, models)

    async def delete_policy(self, account: str, gateway: str, policy_id: str) -> bool:
        status = await self.db.pool.execute(
            "DELETE FROM limits.policies WHERE account_id = $1 AND gateway_id = $2 AND id = $3",
            account, gateway, uuid.UUID(policy_id),
        )
        self.invalidate()
        return bool(status.endswith(" 1"))
