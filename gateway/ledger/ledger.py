"""Ledger operations. Every hold and every settlement is one call to a SQL function (the migrations write them;
gateway/ledger/sql.py says what they do).

Ids: a transfer's UUID is its idempotency key. A top-up's caller-chosen `idempotency_key` (any string) maps to a
UUID with uuid5 over (tenant, key), so the same key for the same tenant is the same transfer; a key that is a
UUID is used as is. A hold's id is the request's reservation id; its resolution's id is derived from it.

Amounts are integer nano-USD here; the admin API and CLI convert decimal strings at their edge (gateway.money).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg

from gateway.db import Database
from gateway.errors import LedgerError, LedgerReason
from gateway.windows import Window

TOPUP_NAMESPACE = uuid.UUID("5c7e2d1a-3f0b-4e8a-9d6c-1b2a3c4d5e6f")
DURATIONS = ("daily", "weekly", "monthly")
STRATEGIES = ("fixed", "rolling")
ROLLING_LENGTH = {"daily": timedelta(days=1), "weekly": timedelta(days=7), "monthly": timedelta(days=30)}
SLICE = timedelta(hours=1)


@dataclass(frozen=True)
class AutoTopUp:
    threshold_nano: int
    amount_nano: int


@dataclass(frozen=True)
class SpendingLimit:
    amount_nano: int
    duration: Literal["daily", "weekly", "monthly"]
    strategy: Literal["fixed", "rolling"]


@dataclass(frozen=True)
class Balance:
    tenant: str
    posted_nano: int  # credits minus debits, posted
    pending_nano: int  # open holds
    auto_topup: AutoTopUp | None
    spending_limit: SpendingLimit | None

    @property
    def available_nano(self) -> int:
        return self.posted_nano - self.pending_nano


@dataclass(frozen=True)
class HoldRefusal:
    """Why a credit hold was refused: the balance (`available_nano`: what it has left) or, for `spending_limit`, the
    account's spending limit — its `duration` and `strategy`, what is `spent_nano` in the window, what other holds
    keep `pending_nano`, the `limit_nano`."""

    reason: LedgerReason
    available_nano: int | None = None
    spent_nano: int = 0
    pending_nano: int = 0
    limit_nano: int = 0
    duration: str | None = None
    strategy: str | None = None

    @classmethod
    def of(cls, result: dict[str, Any]) -> HoldRefusal:
        """From the refusal `ledger.hold` returns."""
        available = result.get("available")
        return cls(LedgerReason(result["reason"]), None if available is None else int(available),
                   int(result.get("spent") or 0), int(result.get("pending") or 0), int(result.get("limit") or 0),
                   result.get("duration"), result.get("strategy"))


@dataclass(frozen=True)
class HoldResult:
    ok: bool
    reason: LedgerReason | None = None  # insufficient_credit | spending_limit | unknown_account | id_conflict
    available_nano: int | None = None
    replay: bool = False
    detail: dict[str, Any] | None = None

    @property
    def refusal(self) -> HoldRefusal | None:
        return None if self.ok or self.detail is None else HoldRefusal.of(self.detail)


@dataclass(frozen=True)
class StatementRow:
    id: uuid.UUID
    created_at: datetime
    code: str
    amount_nano: int  # from the account's point of view: a debit is negative
    request_id: str | None


def topup_id(tenant: str, idempotency_key: str) -> uuid.UUID:
    try:
        return uuid.UUID(idempotency_key)
    except ValueError:
        return uuid.uuid5(TOPUP_NAMESPACE, f"{tenant}\x00{idempotency_key}")


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


class Ledger:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- accounts ---------------------------------------------------------------------------------------------

    async def open_tenant(self, tenant: str, conn: asyncpg.Connection | None = None) -> int:
        """Create the tenant's credits and receivable accounts (idempotent); returns the credits account id."""
        return int(await (conn or self.db.pool).fetchval("SELECT ledger.open_tenant($1)", tenant))

    async def account_id(self, code: str, owner: str = "", shard: int = 0) -> int:
        value = await self.db.pool.fetchval(
            "SELECT id FROM ledger.accounts WHERE code = $1 AND owner = $2 AND shard = $3", code, owner, shard
        )
        if value is None:
            raise LedgerError(LedgerReason.UNKNOWN_ACCOUNT, f"no {code} account for {owner or 'the platform'!r}")
        return int(value)

    async def balance(self, tenant: str) -> Balance:
        row = await self.db.pool.fetchrow(
            "SELECT * FROM ledger.accounts WHERE code = 'credits' AND owner = $1 AND shard = 0", tenant
        )
        if row is None:
            raise LedgerError(LedgerReason.UNKNOWN_ACCOUNT, f"account {tenant!r} has no credits ledger")
        auto = None
        if row["auto_topup_threshold"] is not None:
            auto = AutoTopUp(row["auto_topup_threshold"], row["auto_topup_amount"])
        limit = None
        if row["spend_limit"] is not None:
            limit = SpendingLimit(row["spend_limit"], row["spend_limit_duration"], row["spend_limit_strategy"])
        return Balance(tenant, row["credits_posted"] - row["debits_posted"], row["debits_pending"], auto, limit)

    # -- single transfers ---------------------------------------------------------------------------------------

    async def transfer(
        self, transfer_id: uuid.UUID, debit: int, credit: int, amount_nano: int, code: str,
        *, request_id: str | None = None, now: datetime | None = None,
    ) -> dict[str, Any]:
        """Post a single transfer. Raises LedgerError when refused (insufficient_credit, id_conflict, ...)."""
        if amount_nano <= 0:
            raise LedgerError(LedgerReason.INVALID_AMOUNT, "amount must be greater than zero")
        for attempt in range(2):
            try:
                result: dict[str, Any] = await self.db.pool.fetchval(
                    "SELECT ledger.transfer($1, $2, $3, $4, $5, $6, $7)",
                    transfer_id, debit, credit, amount_nano, code, request_id, _now(now),
                )
                break
            except asyncpg.UniqueViolationError:
                if attempt:  # the same id raced us and won; the next call sees it as a replay
                    raise
        if not result["ok"]:
            reason = LedgerReason(result["reason"])
            messages = {
                LedgerReason.ID_CONFLICT: f"transfer id {transfer_id} was already used with different fields",
                LedgerReason.INSUFFICIENT_CREDIT: "the debit account's balance does not cover the amount",
                LedgerReason.UNKNOWN_ACCOUNT: "unknown ledger account",
            }
            raise LedgerError(reason, messages.get(reason, reason))
        return result

    async def top_up(
        self, tenant: str, amount_nano: int, idempotency_key: str, *, code: str = "topup",
        funding: int | None = None, now: datetime | None = None,
    ) -> tuple[uuid.UUID, bool]:
        """Load credits. Returns (transfer id, replayed). Repeating the key never loads twice."""
        credits = await self.account_id("credits", tenant)
        funding = funding if funding is not None else await self.account_id("funding")
        tid = topup_id(tenant, idempotency_key)
        try:
            result = await self.transfer(tid, funding, credits, amount_nano, code, now=now)
        except LedgerError as exc:
            if exc.reason == LedgerReason.ID_CONFLICT:
                raise LedgerError(LedgerReason.ID_CONFLICT, "idempotency key already used for a different top-up") \
                    from None
            raise
        return tid, bool(result.get("replay"))

    # -- holds -----------------------------------------------------------------------------------------------

    async def hold(
        self, hold_id: uuid.UUID, tenant: str, amount_nano: int, expires_at: datetime,
        *, request_id: str | None = None, now: datetime | None = None,
    ) -> HoldResult:
        """Place a hold. A refusal is a result, not an exception: not enough credit (the 402 path) or the account
        spending limit (a 429)."""
        result = await self.db.pool.fetchval(
            "SELECT ledger.hold($1, $2, $3, $4, $5, $6)",
            hold_id, tenant, amount_nano, expires_at, request_id, _now(now),
        )
        return _hold_result(result)

    async def settle(self, hold_id: uuid.UUID, actual_nano: int, *, now: datetime | None = None) -> dict[str, Any]:
        """Post the actual cost of a hold (0 voids it). Safe to repeat: only the first call changes anything."""
        return await self._resolve(hold_id, actual_nano, "post", now)  # type: ignore[no-any-return]

    async def void(self, hold_id: uuid.UUID, *, now: datetime | None = None) -> dict[str, Any]:
        return await self._resolve(hold_id, 0, "void", now)  # type: ignore[no-any-return]

    async def _resolve(self, hold_id: uuid.UUID, actual: int, kind: str, now: datetime | None) -> Any:
        if actual < 0:
            raise LedgerError(LedgerReason.INVALID_AMOUNT, "actual cost must not be negative")
        return await self.db.pool.fetchval(
            "SELECT ledger.settle_hold($1, $2, $3, $4)", hold_id, actual, kind, _now(now)
        )

    async def bill_cache_hit(self, tenant: str, amount_nano: int, request_id: str, *,
                             now: datetime | None = None) -> dict[str, Any]:
        """Post the charge of a response-cache hit as usage, without a hold: from the credits while they cover it,
        else to the tenant's receivable account (`ledger.bill_unheld`), counted against the account's spending
        limit like settled usage. Once per request: a repeat posts nothing."""
        return await self.db.pool.fetchval(  # type: ignore[no-any-return]
            "SELECT ledger.bill_cache_hit($1, $2, $3, $4)", tenant, amount_nano, request_id, _now(now))

    async def expire_due(self, *, now: datetime | None = None, limit: int = 1000) -> int:
        """The sweeper: expire overdue holds, one short transaction each (FOR UPDATE SKIP LOCKED)."""
        expired = 0
        async with self.db.pool.acquire() as conn:
            stmt = await conn.prepare("SELECT ledger.expire_next($1)")
            while expired < limit:
                result = await stmt.fetchval(_now(now))
                if result is None:
                    break
                expired += bool(result.get("ok"))
        return expired

    # -- settings ----------------------------------------------------------------------------------------------

    async def set_auto_topup(self, tenant: str, setting: AutoTopUp | None) -> None:
        if setting is not None and (setting.threshold_nano < 0 or setting.amount_nano <= 0):
            raise LedgerError(LedgerReason.INVALID_AMOUNT, "threshold must be >= 0 and amount > 0")
        status = await self.db.pool.execute(
            "UPDATE ledger.accounts SET auto_topup_threshold = $2, auto_topup_amount = $3 "
            "WHERE code = 'credits' AND owner = $1 AND shard = 0",
            tenant, setting and setting.threshold_nano, setting and setting.amount_nano,
        )
        if status.endswith(" 0"):
            raise LedgerError(LedgerReason.UNKNOWN_ACCOUNT, f"account {tenant!r} has no credits ledger")

    async def set_spending_limit(self, tenant: str, limit: SpendingLimit | None) -> None:
        """Set or clear the account's unified-billing spending limit.

        Usage slices are kept only while a limit is set; setting one rebuilds the slices of the last 31 days from
        the transfers, under the credits row's lock, so the new limit counts what was already spent.
        """
        if limit is not None:
            if limit.duration not in DURATIONS or limit.strategy not in STRATEGIES or limit.amount_nano <= 0:
                raise LedgerError(LedgerReason.INVALID_LIMIT, "invalid spending limit")
        async with self.db.pool.acquire() as conn, conn.transaction():
            old = await conn.fetchrow(
                "SELECT id, spend_limit FROM ledger.accounts WHERE code = 'credits' AND owner = $1 AND shard = 0 "
                "FOR UPDATE",
                tenant,
            )
            if old is None:
                raise LedgerError(LedgerReason.UNKNOWN_ACCOUNT, f"account {tenant!r} has no credits ledger")
            if limit is not None and old["spend_limit"] is None:
                await conn.execute("DELETE FROM ledger.usage_hourly WHERE tenant = $1", tenant)
                await conn.execute(
                    """
                    INSERT INTO ledger.usage_hourly (tenant, hour, spent)
                    SELECT $1, date_trunc('hour', t.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', sum(t.amount)
                      FROM ledger.transfers t JOIN ledger.accounts a ON a.id = t.debit_account_id
                     WHERE a.owner = $1 AND a.code IN ('credits', 'receivable') AND t.code = 'usage'
                       AND t.kind IN ('single', 'post') AND t.created_at >= now() - interval '31 days'
                     GROUP BY 2
                    """,
                    tenant,
                )
            await conn.execute(
                "UPDATE ledger.accounts SET spend_limit = $2, spend_limit_duration = $3, spend_limit_strategy = $4 "
                "WHERE id = $1",
                old["id"], limit and limit.amount_nano, limit and limit.duration, limit and limit.strategy,
            )

    async def spending_limit_usage(self, tenant: str, *, now: datetime | None = None) -> int | None:
        """Usage counted against the spending limit in its current window (None: no limit)."""
        return await self.db.pool.fetchval(  # type: ignore[no-any-return]
            """
            SELECT coalesce((SELECT sum(spent) FROM ledger.usage_hourly u WHERE u.tenant = a.owner
                   AND u.hour >= ledger.limit_window_start(a.spend_limit_duration, a.spend_limit_strategy, $2)), 0)
              FROM ledger.accounts a
             WHERE a.code = 'credits' AND a.owner = $1 AND a.shard = 0 AND a.spend_limit IS NOT NULL
            """,
            tenant, _now(now),
        )

    async def spending_limit_reset(self, tenant: str, duration: str, strategy: str, needed_nano: int,
                                   *, now: datetime | None = None) -> datetime:
        """When a hold refused by the account spending limit fits again, as far as spend leaving the window goes
        (open holds that settle for less than they hold may free room sooner). `needed_nano` is what must leave
        the window: spent + open holds + the refused hold - the limit.

        Fixed: the next calendar window (00:00 UTC; Monday; the 1st). Rolling: spend is kept in hourly slices and
        a slice counts while its hour overlaps the window, so spend leaves on hour boundaries: the answer is the
        time the oldest slices whose sum covers `needed_nano` have left (never early, at most an hour late). When
        the whole window's spend does not cover it (the open holds and this hold alone pass the limit), the time
        when all of it has left."""
        now = _now(now).astimezone(UTC)
        if strategy == "fixed":
            return Window(duration, "fixed").end(now)  # type: ignore[arg-type]
        rows = await self.db.pool.fetch(
            "SELECT hour, spent FROM ledger.usage_hourly WHERE tenant = $1 "
            "AND hour >= ledger.limit_window_start($2, $3, $4) ORDER BY hour",
            tenant, duration, strategy, now,
        )
        length = ROLLING_LENGTH[duration]
        freed = 0
        for row in rows:
            freed += row["spent"]
            if freed >= needed_nano:
                return row["hour"].astimezone(UTC) + SLICE + length  # type: ignore[no-any-return]
        return now.replace(minute=0, second=0, microsecond=0) + SLICE + length

    # -- statement ---------------------------------------------------------------------------------------------

    async def statement(
        self, tenant: str, *, start: datetime | None = None, end: datetime | None = None,
        after: tuple[datetime, uuid.UUID] | None = None, limit: int = 100,
    ) -> list[StatementRow]:
        """Posted transfers of the tenant's credits account in [start, end), oldest first, keyset-paginated."""
        credits = await self.account_id("credits", tenant)
        rows = await self.db.pool.fetch(
            """
            SELECT id, created_at, code, request_id,
                   CASE WHEN credit_account_id = $1 THEN amount ELSE -amount END AS signed
              FROM ledger.transfers
             WHERE (debit_account_id = $1 OR credit_account_id = $1) AND kind IN ('single', 'post')
               AND ($2::timestamptz IS NULL OR created_at >= $2) AND ($3::timestamptz IS NULL OR created_at < $3)
               AND ($4::timestamptz IS NULL OR (created_at, id) > ($4, $5::uuid))
             ORDER BY created_at, id LIMIT $6
            """,
            credits, start, end, after and after[0], after and after[1], limit,
        )
        return [StatementRow(r["id"], r["created_at"], r["code"], r["signed"], r["request_id"]) for r in rows]


def _hold_result(result: dict[str, Any]) -> HoldResult:
    if result["ok"]:
        return HoldResult(True, available_nano=result.get("available"), replay=bool(result.get("replay")))
    return HoldResult(False, reason=LedgerReason(result["reason"]), available_nano=result.get("available"),
                      detail=result)
