"""Admin endpoints: accounts, credits, top-ups, auto top-up, statement, the account spending limit."""

from __future__ import annotations

from typing import Any

import asyncpg
from starlette.requests import Request

from gateway.admin.api import (
    AdminError,
    AdminRouter,
    AdminServices,
    Created,
    Page,
    admin_error,
    json_body,
    not_found,
    page_of,
    page_params,
    str_field,
    time_range,
    usd_field,
)
from gateway.analytics.budgets import credits_forecast, spending_limit_forecast
from gateway.errors import LedgerError
from gateway.gateways import ID_PATTERN, valid_id
from gateway.ledger import AutoTopUp, SpendingLimit
from gateway.money import usd_str

router = AdminRouter("accounts and credits")

USD_STRING = {"type": "string", "pattern": r"^\d+(\.\d{1,9})?$", "examples": ["50.00"]}


async def ensure_account(services: AdminServices, account: str) -> None:
    if not await services.gateways.account_exists(account):
        raise not_found(f"account {account!r}")


def ledger_error(exc: LedgerError) -> AdminError:
    return admin_error(exc)


@router.route("GET", "/accounts", "List accounts", paginated=True)
async def list_accounts(request: Request, services: AdminServices) -> Page:
    after, limit = page_params(request, "text")
    records = await services.gateways.accounts(after=after[0] if after else None, limit=limit + 1)
    return page_of(records, limit, lambda r: (r.id,), lambda r: r.to_json())


@router.route("POST", "/accounts", "Create an account (and its credit ledger)",
              body={"type": "object", "required": ["id"], "properties": {"id": {"type": "string",
                                                                                  "pattern": ID_PATTERN}}})
async def create_account(request: Request, services: AdminServices) -> Created:
    data = await json_body(request)
    account = str_field(data, "id", max_length=63)
    assert account is not None
    if not valid_id(account):
        raise AdminError(422, "id must be 1-63 characters: lowercase letters, digits, '-' or '_'", "id")
    async with services.db.pool.acquire() as conn, conn.transaction():
        try:
            record = await services.gateways.create_account(account, conn)
        except asyncpg.UniqueViolationError:
            raise AdminError(409, f"account {account!r} already exists", "id") from None
        await services.ledger.open_tenant(account, conn)
        # every account has its `default` gateway from the start, so budgets can be set before the first call
        await services.gateways.create_default(account, conn)
    return Created(record.to_json())


@router.route("GET", "/accounts/{account}", "Get an account")
async def get_account(request: Request, services: AdminServices, account: str) -> dict[str, Any]:
    record = await services.gateways.account(account)
    if record is None:
        raise not_found(f"account {account!r}")
    return record.to_json()


async def credits_view(services: AdminServices, account: str) -> dict[str, Any]:
    """The balance, with its burn-rate forecast (gateway/analytics/forecast.py: when the available credits run
    out at the current rate of usage, auto top-ups aside)."""
    try:
        bal = await services.ledger.balance(account)
    except LedgerError as exc:
        raise ledger_error(exc) from None
    forecast = await credits_forecast(services.db, account, bal.available_nano, services.clock())
    return {
        "balance_usd": usd_str(bal.posted_nano),
        "pending_usd": usd_str(bal.pending_nano),
        "available_usd": usd_str(bal.available_nano),
        "auto_topup": None if bal.auto_topup is None else {
            "threshold_usd": usd_str(bal.auto_topup.threshold_nano),
            "amount_usd": usd_str(bal.auto_topup.amount_nano),
        },
        "forecast": forecast.to_json(),
    }


@router.route("GET", "/accounts/{account}/credits", "Balance, pending holds, auto top-up settings and forecast")
async def get_credits(request: Request, services: AdminServices, account: str) -> dict[str, Any]:
    await ensure_account(services, account)
    return await credits_view(services, account)


@router.route("POST", "/accounts/{account}/credits/topups", "Load credits (idempotent by idempotency_key)",
              body={"type": "object", "required": ["amount_usd", "idempotency_key"],
                    "properties": {"amount_usd": USD_STRING, "idempotency_key": {"type": "string", "maxLength": 200}}})
async def create_topup(request: Request, services: AdminServices, account: str) -> Created:
    await ensure_account(services, account)
    data = await json_body(request)
    amount = usd_field(data, "amount_usd")
    key = str_field(data, "idempotency_key")
    assert amount is not None and key is not None
    try:
        tid, replayed = await services.ledger.top_up(account, amount, key)
    except LedgerError as exc:
        raise ledger_error(exc) from None
    except asyncpg.NumericValueOutOfRangeError:
        # A balance (the account's, or the funding account's total of all top-ups) would pass BIGINT nano-USD;
        # the transfer is one SQL statement, so nothing of it was posted.
        raise AdminError(422, "amount_usd would take a ledger balance past its maximum "
                              "(about 9.2 billion USD)", "amount_usd") from None
    result = {"id": str(tid), "amount_usd": usd_str(amount), "idempotency_key": key, "replayed": replayed,
              "credits": await credits_view(services, account)}
    return Created(result, 200 if replayed else 201)


AUTO_TOPUP_BODY = {"type": "object", "required": ["threshold_usd", "amount_usd"],
                   "properties": {"threshold_usd": USD_STRING, "amount_usd": USD_STRING}}


@router.route("PUT", "/accounts/{account}/credits/auto-topup", "Set auto top-up", body=AUTO_TOPUP_BODY)
async def put_auto_topup(request: Request, services: AdminServices, account: str) -> dict[str, Any]:
    await ensure_account(services, account)
    data = await json_body(request)
    threshold = usd_field(data, "threshold_usd", allow_zero=True)
    amount = usd_field(data, "amount_usd")
    assert threshold is not None and amount is not None
    await services.ledger.set_auto_topup(account, AutoTopUp(threshold, amount))
    return await credits_view(services, account)


@router.route("DELETE", "/accounts/{account}/credits/auto-topup", "Turn auto top-up off")
async def delete_auto_topup(request: Request, services: AdminServices, account: str) -> dict[str, Any]:
    await ensure_account(services, account)
    await services.ledger.set_auto_topup(account, None)
    return await credits_view(services, account)


@router.route("GET", "/accounts/{account}/credits/statement", "Posted transfers of the account over a period",
              query={"from": "ISO 8601 start (inclusive)", "to": "ISO 8601 end (exclusive)"}, paginated=True)
async def get_statement(request: Request, services: AdminServices, account: str) -> Page:
    await ensure_account(services, account)
    start, end = time_range(request)
    after, limit = page_params(request, "time", "uuid")
    rows = await services.ledger.statement(account, start=start, end=end, after=after, limit=limit + 1)
    return page_of(rows, limit, lambda r: (r.created_at, r.id), lambda r: {
        "id": str(r.id), "created_at": r.created_at.isoformat(), "code": r.code,
        "amount_usd": usd_str(r.amount_nano) if r.amount_nano >= 0 else "-" + usd_str(-r.amount_nano),
        "request_id": r.request_id})


# `sliding` is the strategy's former name, still accepted and stored (and returned) as `rolling`
STRATEGY_NAMES = {"fixed": "fixed", "rolling": "rolling", "sliding": "rolling"}
LIMIT_BODY = {"type": "object", "required": ["amount_usd", "duration"],
              "properties": {"amount_usd": USD_STRING, "duration": {"enum": ["daily", "weekly", "monthly"]},
                             "strategy": {"enum": list(STRATEGY_NAMES), "default": "fixed",
                                          "description": "fixed: calendar windows in UTC; rolling: the last day, "
                                                         "7 days or 30 days (`sliding` is read as `rolling`)"}}}


async def limit_view(services: AdminServices, account: str) -> dict[str, Any] | None:
    """The spending limit, what its window has spent and holds, and its forecast (gateway/analytics/budgets.py:
    when the limit is reached at the current rate of usage, before the window resets)."""
    bal = await services.ledger.balance(account)
    limit = bal.spending_limit
    if limit is None:
        return None
    now = services.clock()
    spent = await services.ledger.spending_limit_usage(account, now=now) or 0
    remaining = max(0, limit.amount_nano - spent - bal.pending_nano)
    forecast = await spending_limit_forecast(services.db, account, limit.duration, limit.strategy, remaining, now)
    return {
        "amount_usd": usd_str(limit.amount_nano),
        "duration": limit.duration,
        "strategy": limit.strategy,
        "spent_usd": usd_str(spent),
        "pending_usd": usd_str(bal.pending_nano),
        "remaining_usd": usd_str(remaining),
        "forecast": forecast.to_json(),
    }


@router.route("GET", "/accounts/{account}/billing/spending-limit", "The unified-billing spending limit (or null)")
async def get_spending_limit(request: Request, services: AdminServices, account: str) -> dict[str, Any] | None:
    await ensure_account(services, account)
    return await limit_view(services, account)


@router.route("PUT", "/accounts/{account}/billing/spending-limit", "Set the unified-billing spending limit",
              body=LIMIT_BODY)
async def put_spending_limit(request: Request, services: AdminServices, account: str) -> dict[str, Any] | None:
    await ensure_account(services, account)
    data = await json_body(request)
    amount = usd_field(data, "amount_usd")
    duration = str_field(data, "duration", choices=("daily", "weekly", "monthly"))
    strategy = STRATEGY_NAMES[str_field(data, "strategy", choices=tuple(STRATEGY_NAMES), required=False) or "fixed"]
    assert amount is not None
    await services.ledger.set_spending_limit(account, SpendingLimit(amount, duration, strategy))  # type: ignore[arg-type]
    return await limit_view(services, account)


@router.route("DELETE", "/accounts/{account}/billing/spending-limit", "Remove the spending limit")
async def delete_spending_limit(request: Request, services: AdminServices, account: str) -> None:
    await ensure_account(services, account)
    await services.ledger.set_spending_limit(account, None)
    return None
