"""Dynamic routes in Postgres: every saved graph is a new version; one version is deployed.

Tables `routes` (account, gateway, name, deployed_version) and `route_versions` (route, version, graph). The
deployed graph of each route is cached per instance and dropped on the `spendgate_config` notification.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from gateway.db import Database
from gateway.errors import RouteError, RouteExists, RouteNotFound
from gateway.gateways import GatewayStore
from gateway.routes.graph import validate

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}\Z")  # `\Z`: Python's `$` also matches before a final newline
MAX_VERSION = 2**31 - 1  # route_versions.version is an integer column


class RouteStore:
    def __init__(self, db: Database, gateways: GatewayStore | None = None) -> None:
        self.db = db
        self._deployed: dict[tuple[str, str, str], tuple[int, dict[str, Any]] | None] = {}
        if gateways is not None:
            gateways.on_change(lambda _table: self._deployed.clear())

    async def deployed(self, account: str, gateway: str, name: str) -> dict[str, Any] | None:
        found = await self.deployed_version(account, gateway, name)
        return None if found is None else found[1]

    async def deployed_version(self, account: str, gateway: str, name: str) -> tuple[int, dict[str, Any]] | None:
        """(version, graph) of the deployed version, or None when the route does not exist."""
        key = (account, gateway, name)
        if key not in self._deployed:
            row = await self.db.pool.fetchrow(
                """SELECT v.version, v.graph FROM routes r JOIN route_versions v
                     ON v.route_id = r.id AND v.version = r.deployed_version
                    WHERE r.account_id = $1 AND r.gateway_id = $2 AND r.name = $3""",
                account, gateway, name,
            )
            self._deployed[key] = None if row is None else (row["version"], row["graph"])
        return self._deployed[key]

    async def summaries(self, account: str, gateway: str, *, after: str | None = None,
                        limit: int | None = None) -> list[dict[str, Any]]:
        """Routes by name; a page of them: those named after `after`, at most `limit`."""
        rows = await self.db.pool.fetch(
            """SELECT r.name, r.deployed_version, r.created_at, max(v.version) AS latest_version
                 FROM routes r LEFT JOIN route_versions v ON v.route_id = r.id
                WHERE r.account_id = $1 AND r.gateway_id = $2 AND ($3::text IS NULL OR r.name > $3)
                GROUP BY r.id ORDER BY r.name LIMIT $4""",
            account, gateway, after, limit,
        )
        return [dict(r) for r in rows]

    async def create(self, account: str, gateway: str, name: Any, graph: Any) -> dict[str, Any]:
        """A new route with its first version, deployed."""
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise RouteError("name", "name must be lowercase letters, digits, '.', '_' or '-' (max 63)")
        graph = validate(graph)
        async with self.db.pool.acquire() as conn, conn.transaction():
            try:
                route_id = await conn.fetchval(
                    "INSERT INTO routes (account_id, gateway_id, name, deployed_version) VALUES ($1, $2, $3, 1) "
                    "RETURNING id", account, gateway, name)
            except asyncpg.UniqueViolationError:
                raise RouteExists("name", f"route {name!r} exists; POST a new version instead") from None
            await conn.execute("INSERT INTO route_versions (route_id, version, graph) VALUES ($1, 1, $2)",
                               route_id, graph)
        self._deployed.clear()
        return {"name": name, "version": 1, "deployed_version": 1, "graph": graph}

    async def add_version(self, account: str, gateway: str, name: str, graph: Any) -> dict[str, Any]:
        graph = validate(graph)
        version = await self.db.pool.fetchval(
            """INSERT INTO route_versions (route_id, version, graph)
               SELECT r.id, coalesce((SELECT max(version) FROM route_versions WHERE route_id = r.id), 0) + 1, $4
                 FROM routes r WHERE r.account_id = $1 AND r.gateway_id = $2 AND r.name = $3
                  FOR UPDATE
               RETURNING version""",
            account, gateway, name, graph,
        )
        if version is None:
            raise RouteNotFound(name)
        return {"name": name, "version": version, "graph": graph}

    async def versions(self, account: str, gateway: str, name: str, *, after: int | None = None,
                       limit: int | None = None) -> list[dict[str, Any]]:
        """A route's versions in order; a page of them: those after version `after`, at most `limit`."""
        rows = await self.db.pool.fetch(  # the route's row even when no version follows `after`
            """SELECT v.version, v.graph, v.created_at, v.version = r.deployed_version AS deployed
                 FROM routes r LEFT JOIN route_versions v ON v.route_id = r.id AND ($4::int IS NULL OR v.version > $4)
                WHERE r.account_id = $1 AND r.gateway_id = $2 AND r.name = $3 ORDER BY v.version LIMIT $5""",
            account, gateway, name, after, limit,
        )
        if not rows:
            raise RouteNotFound(name)
        return [dict(r) for r in rows if r["version"] is not None]

    async def deploy(self, account: str, gateway: str, name: str, version: Any) -> None:
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
            raise RouteError("version", f"version must be an integer from 1 to {MAX_VERSION}")
        status = await self.db.pool.execute(
            """UPDATE routes r SET deployed_version = $4
                WHERE r.account_id = $1 AND r.gateway_id = $2 AND r.name = $3
                  AND EXISTS (SELECT 1 FROM route_versions v WHERE v.route_id = r.id AND v.version = $4)""",
            account, gateway, name, version,
        )
        if not status.endswith(" 1"):
            raise RouteNotFound(name, version)
        self._deployed.clear()
