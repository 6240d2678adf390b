"""Admin endpoints: spend analytics of an account (totals, groups, series, CSV) and unusual spend per identity.

`GET /accounts/{a}/analytics`: `?from=&to=` (ISO 8601 with a zone; default the last 30 days), `?gateway=`,
`?group_by=` (comma list, gateway/analytics/queries.py), `?interval=hour|day|week`, `?limit=` (default 50, the
rest summed into one `{"other": true}` group), `?format=csv`, and the logs API's filters by the same names
(`?provider=&model=&status_code=&user_id=&email=&group=&service_token=&metadata.<key>=`): every figure, the
forecast included, is computed from the rows they keep. The JSON result adds `forecast`: the burn rate of the
selection, and when the account's credits run out at the selection's unified-billing rate.

`GET /accounts/{a}/analytics/anomalies`: `?from=&to=` (days, default the last 7 including today), `?gateway=`.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.admin.accounts import ensure_account
from gateway.admin.api import AdminError, AdminRouter, AdminServices, time_range
from gateway.admin.gateways import ensure_gateway
from gateway.admin.logs import status_filter
from gateway.analytics import anomalies
from gateway.analytics.forecast import BALANCE_HORIZON, forecast
from gateway.analytics.queries import (
    DIMENSION_NAMES,
    INTERVALS,
    MAX_LIMIT,
    AnalyticsQuery,
    Result,
    parse_group_by,
    run,
)
from gateway.analytics.store import Filters, source
from gateway.errors import LedgerError, QueryError
from gateway.gateways import valid_id

router = AdminRouter("analytics")

QUERY = {
    "from": "ISO 8601 start, inclusive (default: 30 days before `to`)",
    "to": "ISO 8601 end, exclusive (default: now)",
    "gateway": "one gateway of the account (default: all)",
    "group_by": f"comma list of {', '.join(DIMENSION_NAMES)}",
    "interval": "hour | day | week: a series per group",
    "limit": f"groups kept, 1-{MAX_LIMIT} (default 50); the rest is one group keyed {{\"other\": true}}",
    "format": "json (default) | csv",
    "provider": "only this provider's requests",
    "model": "only this model's requests",
    "status_code": "only requests answered with this HTTP status",
    "user_id": "only this user's requests (identity)",
    "email": "only this email's requests (identity)",
    "group": "only requests of a user in this group (identity)",
    "service_token": "only this service token's requests (identity)",
    "metadata.<key>": "only requests whose metadata value of <key> reads as this (cf.* keys too)",
}


def _gateway(request: Request) -> str | None:
    gateway = request.query_params.get("gateway") or None
    if gateway is not None and not valid_id(gateway):
        raise AdminError(422, "gateway must be a gateway id", "gateway")
    return gateway


def _filters(request: Request) -> Filters:
    """The logs API's filters (gateway/admin/logs.py), by the same names and read the same way (an empty value is
    no filter, except for a metadata key, where it matches the empty string)."""
    q = request.query_params
    metadata = {key[len("metadata."):]: value for key, value in q.items() if key.startswith("metadata.")}
    return Filters(provider=q.get("provider") or None, model=q.get("model") or None,
                   status_code=status_filter(q["status_code"]) if q.get("status_code") else None,
                   user_id=q.get("user_id") or None, email=q.get("email") or None, group=q.get("group") or None,
                   service_token=q.get("service_token") or None, metadata=tuple(metadata.items()))


def _query(request: Request, account: str, now: datetime) -> AnalyticsQuery:
    start, end = time_range(request)
    end = end or (now if start is None or start < now else start + timedelta(days=30))
    start = start or end - timedelta(days=30)
    interval = request.query_params.get("interval") or None
    if interval is not None and interval not in INTERVALS:
        raise AdminError(422, "interval must be hour, day or week", "interval")
    raw_limit = request.query_params.get("limit", "50")
    if not re.fullmatch(r"[0-9]{1,5}", raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise AdminError(422, f"limit must be an integer between 1 and {MAX_LIMIT}", "limit")
    try:
        query = AnalyticsQuery(account, start, end, _gateway(request),
                               parse_group_by(request.query_params.get("group_by")), interval,
                               int(raw_limit), _filters(request))
        query.check()
    except QueryError as exc:
        raise AdminError(422, str(exc), exc.field) from None
    return query


async def _selection_forecast(services: AdminServices, query: AnalyticsQuery, now: datetime) -> dict[str, Any]:
    """The selection's (account, gateway, filters) burn rate over the forecast's history; `exhausted_at` for the credits
    at its unified-billing share."""
    start = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=28)
    args: list[Any] = []
    rows = await services.db.pool.fetch(
        f"SELECT (date_trunc('day', s.at, 'UTC') AT TIME ZONE 'UTC')::date AS day, sum(s.cost_nano) AS cost, "
        f"coalesce(sum(s.cost_nano) FILTER (WHERE s.billing_mode = 'unified'), 0) AS unified "
        f"FROM ({source(query.account, start, now, query.filters, ['billing_mode'], None, args)}) s GROUP BY 1",
        *args)
    spend: dict[date, int] = {r["day"]: int(r["cost"]) for r in rows}
    unified: dict[date, int] = {r["day"]: int(r["unified"]) for r in rows}
    try:
        available = (await services.ledger.balance(query.account)).available_nano
    except LedgerError:
        available = 0
    overall = forecast(spend, now, 0, now)  # the rate; the walk is the credits' below
    credits = forecast(unified, now, available, now + BALANCE_HORIZON)
    exhausted = credits.exhausted_at if credits.rate_nano_per_day > 0 else None
    return {**overall.to_json(), "exhausted_at": None if exhausted is None else
            exhausted.astimezone(UTC).isoformat().replace("+00:00", "Z")}


@router.route("GET", "/accounts/{account}/analytics",
              "Requests, tokens and cost by any dimension, with series, totals and a forecast", query=QUERY)
async def get_analytics(request: Request, services: AdminServices, account: str) -> Any:
    await ensure_account(services, account)
    now = services.clock()
    query = _query(request, account, now)
    output = request.query_params.get("format", "json")
    if output not in ("json", "csv"):
        raise AdminError(422, "format must be json or csv", "format")
    if query.gateway is not None:
        await ensure_gateway(services, account, query.gateway)
    result: Result = await run(services.db, query)
    if output == "csv":
        return Response(result.to_csv(), media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="{account}-analytics.csv"'})
    return {**result.to_json(), "forecast": await _selection_forecast(services, query, now)}


def _day(request: Request, name: str) -> date | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return date.fromisoformat(raw[:10]) if len(raw) > 10 else date.fromisoformat(raw)
    except ValueError:
        raise AdminError(422, f"{name} must be a day (2026-11-01) or an ISO 8601 time", name) from None


@router.route("GET", "/accounts/{account}/analytics/anomalies", "Identities whose daily cost is unusual",
              query={"from": "first day, inclusive (default: 6 days before `to`)",
                     "to": "last day, inclusive (default: today, UTC)", "gateway": "one gateway (default: all)"})
async def get_anomalies(request: Request, services: AdminServices, account: str) -> dict[str, Any]:
    await ensure_account(services, account)
    now = services.clock().astimezone(UTC)
    last = _day(request, "to") or now.date()
    first = _day(request, "from") or last - timedelta(days=anomalies.DEFAULT_DAYS - 1)
    if last < first:
        raise AdminError(422, "to must not be earlier than from", "to")
    if (last - first).days > 366:
        raise AdminError(422, "at most 366 days at once", "from")
    gateway = _gateway(request)
    if gateway is not None:
        await ensure_gateway(services, account, gateway)
    found = await anomalies.find(services.db, account, first, last, now, gateway)
    return {"from": first.isoformat(), "to": last.isoformat(), "thresholds": anomalies.THRESHOLDS,
            "anomalies": [a.to_json() for a in found]}
