"""Tenants' gateways and their settings, cached per instance and invalidated through LISTEN/NOTIFY.

A gateway id that does not exist is unknown (404), except `default`, created on first use with default
settings. Any change to the `gateways` table (and to other config tables that call notify_config_change)
sends NOTIFY spendgate_config; every instance listening drops its cache, so a change applies everywhere
within a second. The listener reconnects if the connection drops and clears the cache when it does.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from gateway.config_cache import ConfigCache
from gateway.db import Database
from gateway.errors import SettingsError, UnknownAccount, UnknownGateway
from gateway.guardrails.policy import validate as validate_guardrails
from gateway.limits.rate_rules import validate as validate_rate_limits

log = logging.getLogger("spendgate.gateways")

# Account and gateway ids. `\Z`, not `$`: Python's `$` also matches before a trailing newline, so "acme\n" would
# pass. ID_PATTERN is the same rule for JSON Schema, where `$` means the end.
ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")
ID_PATTERN = "^[a-z0-9][a-z0-9_-]{0,62}$"
RETENTION_STRATEGIES = ("STOP_INSERTING", "DELETE_OLDEST")
# Bounds that keep settings inside the columns and parameters they end up in (the log writer's row count is a
# BIGINT query parameter); both are far beyond any real use.
MAX_LOG_ROWS = 10**12


def valid_id(value: str) -> bool:
    return ID_RE.match(value) is not None


@dataclass(frozen=True)
class GatewaySettings:
    """A gateway's settings, with their defaults (authentication off, logging on, ZDR off)."""

    authentication: bool = False
    zdr: bool = False
    collect_logs: bool = True
    log_payloads: bool = True
    byok_only: bool = False
    allow_custom_cost: bool = False
    require_identity: bool = False
    log_retention: dict[str, Any] | None = None  # {"max_rows": int, "strategy": STOP_INSERTING|DELETE_OLDEST}
    alert_webhook: str | None = None
    block_unpriced: bool = False
    default_max_output_tokens: int = 4096
    inject_max_tokens: bool = False
    # what the detectors look for, per side, and what is done with a match (gateway/guardrails/policy.py)
    guardrails: dict[str, dict[str, str]] | None = None
    # the response cache (docs/api.md "Response cache"): off unless a TTL is set here or per request
    cache_ttl: int | None = None  # seconds an answer is served from the cache
    cache_scope: str = "gateway"  # "gateway": every caller of the gateway shares entries; "identity": per caller
    cache_hit_charge: str = "0"  # unified billing: the fraction of the original cost a hit is charged (decimal)
    cache_max_mb: int = 100  # the gateway's entries, at most; the oldest are evicted past it
    # requests or tokens per interval, counted across instances (gateway/limits/rate_rules.py)
    rate_limits: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any], *, base: GatewaySettings | None = None) -> GatewaySettings:
        """Validate a (partial) settings object; unknown names and wrong types raise SettingsError."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for name, value in data.items():
            if name not in known:
                raise SettingsError(name, f"unknown setting {name!r}")
            values[name] = _validate(name, value)
        return replace(base or cls(), **values)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def hit_charge(self) -> Decimal:
        return Decimal(self.cache_hit_charge)


_BOOLS = {"authentication", "zdr", "collect_logs", "log_payloads", "byok_only", "allow_custom_cost",
          "require_identity", "block_unpriced", "inject_max_tokens"}


def _validate(name: str, value: Any) -> Any:
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise SettingsError(name, f"{name} must be true or false")
        return value
    if name == "default_max_output_tokens":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000:
            raise SettingsError(name, f"{name} must be an integer between 1 and 1000000")
        return value
    if name in CACHE_SETTINGS:
        return _validate_cache(name, value)
    if name == "guardrails":
        return validate_guardrails(value)
    if name == "rate_limits":
        return validate_rate_limits(value)
    if name == "alert_webhook":
        if value is not None and not _http_url(value):
            raise SettingsError(name, f"{name} must be an http(s) URL or null")
        return value
    if name == "log_retention":
        if value is None:
            return None
        if not isinstance(value, dict) or set(value) - {"max_rows", "strategy"}:
            raise SettingsError(
                name, 'log_retention must be {"max_rows": N, "strategy": "STOP_INSERTING|DELETE_OLDEST"}'
            )
        rows = value.get("max_rows")
        if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows <= MAX_LOG_ROWS:
            raise SettingsError(name, f"log_retention.max_rows must be an integer from 1 to {MAX_LOG_ROWS}")
        strategy = value.get("strategy", "STOP_INSERTING")
        if strategy not in RETENTION_STRATEGIES:
            raise SettingsError(name, "log_retention.strategy must be STOP_INSERTING or DELETE_OLDEST")
        return {"max_rows": rows, "strategy": strategy}
    raise SettingsError(name, f"unknown setting {name!r}")  # pragma: no cover - guarded by from_json


CACHE_SETTINGS = {"cache_ttl", "cache_scope", "cache_hit_charge", "cache_max_mb"}
CACHE_SCOPES = ("gateway", "identity")
MAX_CACHE_TTL_S = 30 * 24 * 3600  # a month (also the bound of cf-aig-cache-ttl)
MAX_CACHE_MB = 1024 * 1024  # a terabyte: far beyond use, and inside BIGINT bytes
NANO = Decimal("1e-9")


def _validate_cache(name: str, value: Any) -> Any:
    if name == "cache_ttl":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CACHE_TTL_S:
            raise SettingsError(name, f"cache_ttl must be null (off) or seconds from 1 to {MAX_CACHE_TTL_S}")
        return value
    if name == "cache_scope":
        if value not in CACHE_SCOPES:
            raise SettingsError(name, "cache_scope must be gateway or identity")
        return value
    if name == "cache_max_mb":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CACHE_MB:
            raise SettingsError(name, f"cache_max_mb must be an integer from 1 to {MAX_CACHE_MB}")
        return value
    # cache_hit_charge: a fraction from 0 to 1, as a decimal string or a number (floats read as written)
    if isinstance(value, bool) or not isinstance(value, int | float | str) or \
            (isinstance(value, str) and not 1 <= len(value) <= 40):
        raise SettingsError(name, "cache_hit_charge must be a fraction from 0 to 1 (at most 9 decimals), e.g. "
                                  "\"0.25\"")
    try:
        fraction = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise SettingsError(name, "cache_hit_charge must be a fraction from 0 to 1 (at most 9 decimals), e.g. "
                                  "\"0.25\"") from None
    if not fraction.is_finite() or not 0 <= fraction <= 1 or fraction.quantize(NANO) != fraction:
        raise SettingsError(name, "cache_hit_charge must be a fraction from 0 to 1 (at most 9 decimals), e.g. "
                                  "\"0.25\"")
    return format(fraction.quantize(NANO).normalize(), "f") if fraction else "0"


def _http_url(value: Any) -> bool:
    if not isinstance(value, str) or len(value) > 2000 or not value.startswith(("http://", "https://")):
        return False
    try:
        return bool(urlsplit(value).hostname)
    except ValueError:  # "http://[::1": urlsplit raises on a broken IPv6 host
        return False


@dataclass(frozen=True)
class Gateway:
    account_id: str
    id: str
    settings: GatewaySettings = field(default_factory=GatewaySettings)


@dataclass(frozen=True)
class AccountRecord:
    id: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class GatewayRecord:
    """A gateway as the admin API shows it: its settings and when it was created and last changed."""

    id: str
    settings: GatewaySettings
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> GatewayRecord:
        return cls(row["id"], GatewaySettings.from_json(row["settings"]), row["created_at"], row["updated_at"])


_RECORD = "SELECT id, settings, created_at, updated_at FROM gateways WHERE account_id = $1 AND id = $2"


CONNECTION_LOST = "*connection-lost*"  # the "table" passed to on_change callbacks when the listener lost the db


class GatewayStore:
    """Read gateways on the hot path from a per-instance cache that NOTIFY invalidates.

    `fail_open`: keep serving the last known settings while the database is unreachable (gateway/config_cache.py).
    """

    CHANNEL = "spendgate_config"

    def __init__(self, db: Database, *, fail_open: bool = False) -> None:
        self.db = db
        self.fail_open = fail_open
        self._cache: ConfigCache[tuple[str, str], Gateway] = self.new_cache()
        self._listener: asyncio.Task[None] | None = None
        self._listening = False
        self._on_change: list[Callable[[str], None]] = []
        self.on_change(self._drop)

    def new_cache(self) -> ConfigCache[Any, Any]:
        """A cache for another configuration store, with this instance's fail-open choice; register its
        invalidation with `on_change(cache_invalidator(cache))`."""
        return ConfigCache(fail_open=self.fail_open)

    def _drop(self, table: str) -> None:
        cache_invalidator(self._cache)(table)

    def on_change(self, callback: Callable[[str], None]) -> None:
        """Other caches (keys, prices, rules) register here to be dropped on the same notification."""
        self._on_change.append(callback)

    def invalidate(self, table: str = "*") -> None:
        for callback in self._on_change:
            callback(table)

    async def get(self, account_id: str, gateway_id: str) -> Gateway:
        key = (account_id, gateway_id)
        cached = self._cache.peek(key)
        if cached is not None:
            return cached
        if not valid_id(account_id):
            raise UnknownAccount(account_id)
        if not valid_id(gateway_id):
            raise UnknownGateway(gateway_id)
        return await self._cache.get(key, lambda: self._load(account_id, gateway_id))

    async def _load(self, account_id: str, gateway_id: str) -> Gateway:
        row = await self.db.pool.fetchrow(
            "SELECT (SELECT id FROM accounts WHERE id = $1) AS account, "
            "(SELECT settings FROM gateways WHERE account_id = $1 AND id = $2) AS settings",
            account_id, gateway_id,
        )
        if row is None or row["account"] is None:
            raise UnknownAccount(account_id)
        settings = row["settings"]
        if settings is None:
            if gateway_id != "default":
                raise UnknownGateway(gateway_id)
            # Only an insert that happens may run the statement: the table's NOTIFY trigger fires per statement,
            # even for one that inserts nothing, and would drop every instance's caches on every cache miss.
            settings = await self.db.pool.fetchval(
                "WITH created AS (INSERT INTO gateways (account_id, id) VALUES ($1, 'default') "
                "ON CONFLICT DO NOTHING RETURNING settings) "
                "SELECT coalesce((SELECT settings FROM created), "
                "(SELECT settings FROM gateways WHERE account_id = $1 AND id = 'default'))",
                account_id,
            )
            if settings is None:  # created by another instance after this statement's snapshot was taken
                settings = await self.db.pool.fetchval(
                    "SELECT settings FROM gateways WHERE account_id = $1 AND id = 'default'", account_id)
        return Gateway(account_id, gateway_id, GatewaySettings.from_json(settings))

    # -- the accounts table: this store is its one reader and writer (an account owns its gateways) -----------------

    async def account_exists(self, account_id: str) -> bool:
        return bool(await self.db.pool.fetchval("SELECT 1 FROM accounts WHERE id = $1", account_id))

    async def account(self, account_id: str) -> AccountRecord | None:
        row = await self.db.pool.fetchrow("SELECT id, created_at FROM accounts WHERE id = $1", account_id)
        return None if row is None else AccountRecord(row["id"], row["created_at"])

    async def accounts(self, *, after: str | None, limit: int) -> list[AccountRecord]:
        """Accounts by id: those after `after`, at most `limit`."""
        rows = await self.db.pool.fetch(
            "SELECT id, created_at FROM accounts WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
            after, limit)
        return [AccountRecord(r["id"], r["created_at"]) for r in rows]

    async def create_account(self, account_id: str, conn: asyncpg.Connection) -> AccountRecord:
        """Insert the account inside the caller's transaction (which opens its ledger and its `default` gateway
        too). Raises asyncpg.UniqueViolationError when it exists."""
        row = await conn.fetchrow("INSERT INTO accounts (id) VALUES ($1) RETURNING id, created_at", account_id)
        return AccountRecord(row["id"], row["created_at"])

    # -- the table, for the admin API (each write reaches every instance's caches through the table's NOTIFY) ----

    async def record(self, account_id: str, gateway_id: str) -> GatewayRecord:
        """The gateway as stored, read now (not from the cache). `default` exists for every account: created here
        for accounts older than that rule. Raises UnknownAccount, UnknownGateway."""
        row = await self.db.pool.fetchrow(_RECORD, account_id, gateway_id)
        if row is None:
            if not await self.account_exists(account_id):
                raise UnknownAccount(account_id)
            if gateway_id != "default":
                raise UnknownGateway(gateway_id)
            await self.create_default(account_id)
            row = await self.db.pool.fetchrow(_RECORD, account_id, gateway_id)
        return GatewayRecord.of(row)

    async def records(self, account_id: str, *, after: str | None, limit: int) -> list[GatewayRecord]:
        """The account's gateways by id: those after `after`, at most `limit`."""
        rows = await self.db.pool.fetch(
            "SELECT id, settings, created_at, updated_at FROM gateways WHERE account_id = $1 "
            "AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3", account_id, after, limit,
        )
        return [GatewayRecord.of(r) for r in rows]

    async def create(self, account_id: str, gateway_id: str, settings: GatewaySettings) -> GatewayRecord | None:
        """The new gateway; None when the account has one of that id already."""
        try:
            row = await self.db.pool.fetchrow(
                "INSERT INTO gateways (account_id, id, settings) VALUES ($1, $2, $3) "
                "RETURNING id, settings, created_at, updated_at",
                account_id, gateway_id, settings.to_json(),
            )
        except asyncpg.UniqueViolationError:
            return None
        return GatewayRecord.of(row)

    async def create_default(self, account_id: str, conn: asyncpg.Connection | None = None) -> None:
        """The account's `default` gateway, unless it exists (`conn`: inside the caller's transaction)."""
        await (conn or self.db.pool).execute(
            "INSERT INTO gateways (account_id, id) VALUES ($1, 'default') ON CONFLICT DO NOTHING", account_id)

    async def update(self, account_id: str, gateway_id: str, settings: GatewaySettings) -> GatewayRecord:
        row = await self.db.pool.fetchrow(
            "UPDATE gateways SET settings = $3, updated_at = now() WHERE account_id = $1 AND id = $2 "
            "RETURNING id, settings, created_at, updated_at",
            account_id, gateway_id, settings.to_json(),
        )
        self.invalidate("gateways")  # this instance at once; the others through NOTIFY
        return GatewayRecord.of(row)

    async def delete(self, account_id: str, gateway_id: str) -> None:
        """The gateway and, through the foreign keys, its configuration."""
        await self.db.pool.execute("DELETE FROM gateways WHERE account_id = $1 AND id = $2", account_id, gateway_id)
        self.invalidate("gateways")

    # -- the NOTIFY listener --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; returns once the LISTEN is registered (a change committed after this returns is heard),
        or once the first attempt failed (the database is unreachable: the listener keeps retrying)."""
        if self._listener is not None:
            return
        first_attempt = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(first_attempt), name="spendgate-config-listener")
        attempt = asyncio.ensure_future(first_attempt.wait())
        try:
            # the listener task ending early (it never does, short of a bug) must not leave start() waiting
            await asyncio.wait({attempt, self._listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            attempt.cancel()

    @property
    def listening(self) -> bool:
        return self._listening

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
            self._listener = None

    async def _listen(self, first_attempt: asyncio.Event) -> None:
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.db.url)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(self.CHANNEL, lambda _c, _pid, _ch, payload: self.invalidate(payload))
                self._listening = True
                first_attempt.set()
                self.invalidate(CONNECTION_LOST)  # anything may have changed while we were not listening
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep listening through database restarts
                log.warning("config listener lost its connection: %s", exc)
            finally:
                self._listening = False
                first_attempt.set()
                if conn is not None and not conn.is_closed():
                    await conn.close()
            self.invalidate(CONNECTION_LOST)
            await asyncio.sleep(1)


def cache_invalidator(cache: ConfigCache[Any, Any]) -> Callable[[str], None]:
    """A notification means the data changed: drop everything, last-known values included. A lost listener
    connection only means a change may have been missed: drop the fresh entries, keep the last-known ones."""

    def drop(table: str) -> None:
        if table == CONNECTION_LOST:
            cache.clear()
        else:
            cache.forget()

    return drop
