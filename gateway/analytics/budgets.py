"""Forecasts of what limits spending: each spend-limit bucket, and an account's unified-billing credits; and the
`"forecast"` alert of a rule's `alert_at`.

A bucket's history is the logged spend of the rule's scope: the daily rollups of the rule's gateway, grouped by
the dimensions the rule names, each group put in the buckets `Rule.bucket_keys` gives it (the same matching as a
request's). Its remaining amount is the bucket's own counter (budget - spent - pending). A balance's history is
its usage debits in the ledger.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

from gateway.analytics.forecast import BALANCE_HORIZON, HISTORY_DAYS, Forecast, forecast
from gateway.analytics.store import Filters, source
from gateway.db import Database
from gateway.limits.buckets import bucket_status
from gateway.limits.rules import Rule, parse_rule
from gateway.windows import ROLLING_LENGTH, Window

IDENTITY_COLUMNS = {"cf.user_id": "user_id", "cf.user.email": "email", "cf.user.groups": "groups",
                    "cf.service_token": "service_token"}


def history_start(now: datetime, window: Window | None = None) -> datetime:
    """Where a forecast's history starts: the method's 28 days, or more for a rolling window whose walk lets the
    spend of one window ago (30 days for a monthly one) age out day by day."""
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    days = HISTORY_DAYS
    if window is not None and window.type == "rolling":
        days = max(days, ROLLING_LENGTH[window.name].days + 1)
    return day - timedelta(days=days)


def canonical(key: Any) -> str:
    """A bucket key as `Rule.bucket_keys` writes it."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


async def rule_histories(db: Database, account: str, gateway: str, rule: Rule,
                         now: datetime) -> dict[str, dict[date, int]]:
    """Daily spend (nano-USD) of each bucket key of `rule` over the forecast's history, today included."""
    names = sorted({d.name for d in rule.dimensions})
    keys = [name[len("metadata."):] for name in names if name.startswith("metadata.")]
    exprs: list[str] = []
    columns: list[str] = []
    args: list[Any] = []
    for name in names:
        if name.startswith("metadata."):
            if len(keys) == 1:  # the metadata rollups may answer (gateway/analytics/store.py)
                exprs.append("s.meta")
                column = "meta"
            else:
                args.append(name[len("metadata."):])
                exprs.append(f"nullif(s.metadata -> ${len(args)}::text, 'null'::jsonb)")
                column = "metadata"
        elif name in ("provider", "model"):
            exprs.append("s.provider" if name == "provider" else "s.provider || '/' || s.model")
            column = "provider"
            if name == "model" and "model" not in columns:
                columns.append("model")
        else:
            column = IDENTITY_COLUMNS[name]
            exprs.append(f"s.{column}")
        if column not in columns:
            columns.append(column)
    rows_sql = source(account, history_start(now, rule.window), now, Filters(gateway=gateway), columns,
                      keys[0] if len(keys) == 1 else None, args)
    selected = "".join(f", {e} AS d{i}" for i, e in enumerate(exprs))
    grouped = "".join(f", {i + 3}" for i in range(len(exprs)))
    rows = await db.pool.fetch(
        f"SELECT (date_trunc('day', s.at, 'UTC') AT TIME ZONE 'UTC')::date AS day, sum(s.cost_nano) AS cost"
        f"{selected} FROM ({rows_sql}) s GROUP BY 1{grouped}", *args)
    out: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        attributes = {name: row[f"d{i}"] for i, name in enumerate(names)}
        for key in rule.bucket_keys(attributes):
            out[key][row["day"]] += int(row["cost"])
    return out


def _until(window: Window, now: datetime) -> datetime:
    return window.end(now) if window.type == "fixed" else now + ROLLING_LENGTH[window.name]


def bucket_forecast(rule: Rule, history: dict[date, int], remaining_nano: int, now: datetime) -> Forecast:
    return window_forecast(rule.window, history, remaining_nano, now)


def window_forecast(window: Window, history: dict[date, int], remaining_nano: int, now: datetime) -> Forecast:
    """What is left in a window, walked: a fixed window until it resets; a rolling one for one window length, the
    spend of one window ago ageing out day by day meanwhile."""
    leaving = None
    if window.type == "rolling":
        back = ROLLING_LENGTH[window.name]

        def leaving(day: date) -> float:
            return float(history.get(day - back, 0))

    return forecast(history, now, remaining_nano, _until(window, now), leaving)


async def rule_forecasts(db: Database, account: str, gateway: str, rule: Rule, buckets: list[dict[str, Any]],
                         now: datetime) -> list[Forecast]:
    """The forecast of each of `buckets` (as gateway.limits.buckets.bucket_status lists them), in order."""
    if not buckets:
        return []
    histories = await rule_histories(db, account, gateway, rule, now)
    return [bucket_forecast(rule, histories.get(canonical(b["key"]), {}), b["remaining_nano"], now)
            for b in buckets]


async def credit_usage(db: Database, account: str, now: datetime) -> dict[date, int]:
    """Usage debits of the account's credits per UTC day over the forecast's history (read here, beside the
    ledger's own queries, because only forecasts need it per day)."""
    rows = await db.pool.fetch(
        """
        SELECT (date_trunc('day', t.created_at, 'UTC') AT TIME ZONE 'UTC')::date AS day, sum(t.amount)::bigint AS spent
          FROM ledger.transfers t
         WHERE t.debit_account_id = (SELECT id FROM ledger.accounts
                                      WHERE code = 'credits' AND owner = $1 AND shard = 0)
           AND t.code = 'usage' AND t.kind IN ('single', 'post') AND t.created_at >= $2
         GROUP BY 1
        """,
        account, history_start(now))
    return {r["day"]: r["spent"] for r in rows}


async def credits_forecast(db: Database, account: str, available_nano: int, now: datetime) -> Forecast:
    return forecast(await credit_usage(db, account, now), now, available_nano, now + BALANCE_HORIZON)


async def spending_limit_forecast(db: Database, account: str, duration: str, strategy: str, remaining_nano: int,
                                  now: datetime) -> Forecast:
    """The account spending limit's forecast, from the usage the limit itself counts (the ledger's hourly usage
    slices of the tenant: settled usage, excess and cache-hit charges), walked like a bucket's: a fixed window
    (calendar day, week or month, UTC) until it resets, a rolling one for one window length with the usage of one
    window ago ageing out meanwhile (the ledger counts rolling usage in hourly slices; the walk, in days, is an
    estimate of it)."""
    window = Window(duration, "fixed" if strategy == "fixed" else "rolling")  # type: ignore[arg-type]
    rows = await db.pool.fetch(
        """
        SELECT (date_trunc('day', u.hour, 'UTC') AT TIME ZONE 'UTC')::date AS day, sum(u.spent)::bigint AS spent
          FROM ledger.usage_hourly u
         WHERE u.tenant = $1 AND u.hour >= $2
         GROUP BY 1
        """,
        account, history_start(now, window))
    return window_forecast(window, {r["day"]: r["spent"] for r in rows}, remaining_nano, now)


# -- the "forecast" alert --------------------------------------------------------------------------------------


async def record_forecast_alerts(db: Database, now: datetime) -> int:
    """For every rule whose `alert_at` has "forecast": one alert per bucket and window when the forecast says the
    bucket runs out before its window ends (recorded at fraction 0; the unique key makes it one). Returns how many
    were recorded now."""
    rows = await db.pool.fetch(
        "SELECT id, account_id, gateway_id, spec FROM limits.rules WHERE spec->'alert_at' @> '[\"forecast\"]'")
    recorded = 0
    for row in rows:
        rule = parse_rule(str(row["id"]), row["spec"])
        buckets = await bucket_status(db, rule, now)
        forecasts = await rule_forecasts(db, row["account_id"], row["gateway_id"], rule, buckets, now)
        window = rule.window.start(now) if rule.window.type == "fixed" else Window(rule.window.name, "fixed").start(now)
        for bucket, fc in zip(buckets, forecasts, strict=True):
            if fc.exhausted_at is None:
                continue
            status = await db.pool.execute(
                """
                INSERT INTO limits.alerts (rule_id, key, window_start, fraction, spent, budget, kind, exhausted_at)
                VALUES ($1, $2, $3, 0, $4, $5, 'forecast', $6) ON CONFLICT DO NOTHING
                """,
                uuid.UUID(rule.id), canonical(bucket["key"]), window, bucket["spent_nano"], rule.budget_nano,
                fc.exhausted_at)
            recorded += status.endswith(" 1")
    return recorded
