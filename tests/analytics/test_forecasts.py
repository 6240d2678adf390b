"""Forecasts (a controllable clock, through the admin API) and the "forecast" alert; anomaly thresholds."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import httpx

from gateway.analytics.anomalies import percentile
from gateway.analytics.budgets import record_forecast_alerts
from gateway.analytics.forecast import exhaustion, fit, forecast
from gateway.db import Database
from gateway.ledger import Ledger
from gateway.limits.rules import parse_rule
from tests.analytics.conftest import NOW, Clock, log_row, write

USD = 1_000_000_000


def test_a_weekly_cycle_with_a_trend_is_followed() -> None:
    today = date(2026, 11, 16)  # a Monday

    def spend(d: date) -> int:
        t = (d - today).days
        return int((100 + 2 * t) * (0.4 if d.weekday() >= 5 else 1.0) * USD)
    history = {today - timedelta(days=i): spend(today - timedelta(days=i)) for i in range(1, 29)}
    model = fit(history, datetime(2026, 11, 16, 9, tzinfo=UTC))
    for ahead in range(7):
        day = today + timedelta(days=ahead)
        assert abs(model.rate(day) - spend(day)) / spend(day) < 0.06, (day, model.rate(day), spend(day))
    assert model.profile[5] < 0.6 < 1.0 < model.profile[0]
    # short history: flat, no profile
    short = fit({today - timedelta(days=i): 10 * USD for i in range(1, 4)}, datetime(2026, 11, 16, tzinfo=UTC))
    assert short.profile == (1.0,) * 7 and short.slope == 0 and round(short.level) == 10 * USD
    # nothing complete yet: today so far, over the part of today that passed
    first = fit({today: 3 * USD}, datetime(2026, 11, 16, 6, tzinfo=UTC))
    assert round(first.rate(today)) == 12 * USD


def test_exhaustion_walks_to_the_window_end() -> None:
    now = datetime(2026, 11, 18, 12, tzinfo=UTC)
    flat = {date(2026, 11, 18) - timedelta(days=i): 10 * USD for i in range(1, 20)}
    model = fit(flat, now)
    midnight = datetime(2026, 11, 19, tzinfo=UTC)
    assert exhaustion(model, now, 5 * USD, midnight) == midnight - timedelta(hours=0)  # 5 USD in 12 h
    assert exhaustion(model, now, 4 * USD, midnight) == now + timedelta(hours=9.6)
    assert exhaustion(model, now, 6 * USD, midnight) is None  # the window resets first
    assert exhaustion(model, now, 0, midnight) == now  # nothing left
    assert exhaustion(model, now, 25 * USD, now + timedelta(days=30)) == now + timedelta(days=2.5)
    # a rolling window: what ages out makes room
    assert exhaustion(model, now, 6 * USD, now + timedelta(days=1), lambda d: 10 * USD) is None
    assert forecast({}, now, 10 * USD, midnight).to_json() == {
        "rate_usd_per_day": "0.00", "exhausted_at": None, "method": "trend-weekday-28d"}


async def test_bucket_forecasts_and_the_forecast_alert(admin: httpx.AsyncClient, account: str, db: Database,
                                                       clock: Clock) -> None:
    clock.now = datetime(2026, 11, 18, 8, tzinfo=UTC)
    rule_body = {"name": "per-user", "budget_usd": "10", "window": "daily",
                 "scope": {"cf.user_id": {"split": True}}, "alert_at": [0.9, "forecast"]}
    created = await admin.post(f"/accounts/{account}/gateways/prod/spend-limits", json=rule_body)
    assert created.status_code == 201, created.text
    rule = parse_rule(created.json()["result"]["id"], rule_body)
    assert rule.forecast_alert and rule.alert_at == (Decimal("0.9"),)
    # 8 USD a day for two weeks (ada) and 1 USD a day (bob), logged on the rule's gateway
    rows = []
    for days in range(1, 15):
        at = clock.now - timedelta(days=days)
        rows += [log_row(account, "prod", at, cost="8", user="ada"), log_row(account, "prod", at, cost="1", user="bob")]
    rows.append(log_row(account, "default", clock.now - timedelta(days=1), cost="500", user="ada"))  # other gateway
    await write(db, rows)
    for user, spent in (("ada", 6 * USD), ("bob", USD // 2)):  # the buckets' counters in today's window
        await db.pool.execute("INSERT INTO limits.buckets (rule_id, key, window_start, spent) VALUES ($1, $2, $3, $4)",
                              uuid.UUID(rule.id), f'{{"cf.user_id":"{user}"}}', rule.window.start(clock.now), spent)
    buckets = {b["key"]["cf.user_id"]: b for b in
               (await admin.get(f"/accounts/{account}/gateways/prod/spend-limits")).json()["result"][0]["buckets"]}
    # ada: 4 USD left at 8 USD a day -> 12 hours; bob: 9.50 left at 1 USD a day -> after the reset
    assert buckets["ada"]["forecast"] == {"rate_usd_per_day": "8.00", "exhausted_at": "2026-11-18T20:00:00Z",
                                          "method": "trend-weekday-28d"}
    assert buckets["bob"]["forecast"]["rate_usd_per_day"] == "1.00"
    assert buckets["bob"]["forecast"]["exhausted_at"] is None
    assert await record_forecast_alerts(db, clock.now) == 1
    assert await record_forecast_alerts(db, clock.now + timedelta(hours=1)) == 0  # one per bucket and window
    alert = await db.pool.fetchrow("SELECT * FROM limits.alerts WHERE rule_id = $1", uuid.UUID(rule.id))
    assert alert["kind"] == "forecast" and alert["key"] == '{"cf.user_id":"ada"}' and alert["fraction"] == 0
    assert alert["exhausted_at"] == datetime(2026, 11, 18, 20, tzinfo=UTC)
    from gateway.limits.alerts import AlertDelivery
    payload = AlertDelivery.payload({**dict(alert), "rule_name": "per-user", "account": account, "gateway": "prod"})
    assert payload["type"] == "spend_limit.forecast" and payload["exhausted_at"].startswith("2026-11-18T20:00")


async def test_credits_carry_a_forecast(admin: httpx.AsyncClient, account: str, clock: Clock) -> None:
    credits = (await admin.get(f"/accounts/{account}/credits")).json()["result"]
    assert credits["forecast"] == {"rate_usd_per_day": "0.00", "exhausted_at": "2026-11-18T15:37:12Z",
                                   "method": "trend-weekday-28d"}  # nothing available: empty now
    await admin.post(f"/accounts/{account}/credits/topups", json={"amount_usd": "50", "idempotency_key": "k"})
    credits = (await admin.get(f"/accounts/{account}/credits")).json()["result"]
    assert credits["forecast"]["exhausted_at"] is None  # nothing spends them


async def limited(admin: httpx.AsyncClient, account: str) -> None:
    """A spending limit set before the history is made: the ledger keeps usage slices only while one is set (and
    rebuilds them from the real clock's last 31 days when one is first set, which a test's fixed clock is not)."""
    put = await admin.put(f"/accounts/{account}/billing/spending-limit",
                          json={"amount_usd": "100000", "duration": "monthly", "strategy": "fixed"})
    assert put.status_code == 200, put.text


async def test_the_account_spending_limit_carries_a_forecast(admin: httpx.AsyncClient, account: str, db: Database,
                                                             clock: Clock) -> None:
    """$4 of unified-billing usage on each of the last 28 days and at 01:00 today (a Wednesday): a weekly calendar
    limit of $20 has $8 left (Monday, Tuesday, today), reached two days from now at $4 a day; a daily one resets
    first; a rolling week lets a day's $4 age out as each day passes, so $28 with $0 left is reached now."""
    await admin.post(f"/accounts/{account}/credits/topups", json={"amount_usd": "1000", "idempotency_key": "seed"})
    await limited(admin, account)
    ledger = Ledger(db)
    today = NOW.replace(hour=1, minute=0, second=0)
    for days_ago in range(29):
        at = today - timedelta(days=days_ago)
        hold = uuid.uuid4()
        assert (await ledger.hold(hold, account, 4 * USD, at + timedelta(minutes=15), now=at)).ok
        await ledger.settle(hold, 4 * USD, now=at)

    put = await admin.put(f"/accounts/{account}/billing/spending-limit",
                          json={"amount_usd": "20", "duration": "weekly", "strategy": "fixed"})
    limit = put.json()["result"]
    assert (limit["spent_usd"], limit["remaining_usd"]) == ("12.00", "8.00")
    assert limit["forecast"] == {"rate_usd_per_day": "4.00", "exhausted_at": "2026-11-20T15:37:12Z",
                                 "method": "trend-weekday-28d"}
    assert (await admin.get(f"/accounts/{account}/billing/spending-limit")).json()["result"] == limit

    daily = (await admin.put(f"/accounts/{account}/billing/spending-limit",
                             json={"amount_usd": "20", "duration": "daily", "strategy": "fixed"})).json()["result"]
    assert daily["remaining_usd"] == "16.00" and daily["forecast"]["exhausted_at"] is None  # it resets first

    rolling = (await admin.put(f"/accounts/{account}/billing/spending-limit",
                               json={"amount_usd": "30", "duration": "weekly", "strategy": "rolling"})).json()["result"]
    # the last 7 days: today's $4 and the six days before (7 days ago at 01:00 is out of the window)
    assert (rolling["spent_usd"], rolling["remaining_usd"]) == ("28.00", "2.00")
    assert rolling["forecast"]["exhausted_at"] is None  # $4 a day in, $4 a day ageing out
    full = (await admin.put(f"/accounts/{account}/billing/spending-limit",
                            json={"amount_usd": "28", "duration": "weekly", "strategy": "rolling"})).json()["result"]
    assert full["remaining_usd"] == "0.00" and full["forecast"]["exhausted_at"] == "2026-11-18T15:37:12Z"

    clock.now = NOW + timedelta(days=1)  # Thursday: Thursday's usage has not come, $8 left at $4 a day
    later = (await admin.put(f"/accounts/{account}/billing/spending-limit",
                             json={"amount_usd": "20", "duration": "weekly", "strategy": "fixed"})).json()["result"]
    assert later["spent_usd"] == "12.00"
    assert later["forecast"]["exhausted_at"] == "2026-11-21T15:37:12Z"


async def test_the_spending_limit_forecast_reads_what_the_limit_counts(admin: httpx.AsyncClient, account: str,
                                                                      db: Database, clock: Clock) -> None:
    """Each past day $1 is held and $3 used: $1 from the hold, the excess from the credits and, once they have run
    out (the last day), billed to the account's receivable. The limit counts all of it, and so does its forecast's
    rate (the credits' debits alone would say less)."""
    await admin.post(f"/accounts/{account}/credits/topups", json={"amount_usd": "40", "idempotency_key": "seed"})
    await limited(admin, account)
    ledger = Ledger(db)
    for days_ago in range(1, 15):
        at = NOW.replace(hour=1) - timedelta(days=days_ago)
        hold = uuid.uuid4()
        assert (await ledger.hold(hold, account, USD, at + timedelta(minutes=15), now=at)).ok
        await ledger.settle(hold, 3 * USD, now=at)
    limit = (await admin.put(f"/accounts/{account}/billing/spending-limit",
                             json={"amount_usd": "100", "duration": "monthly", "strategy": "fixed"})).json()["result"]
    assert limit["spent_usd"] == "42.00"  # 14 days of $3, more than the $40 of credits
    assert limit["forecast"]["rate_usd_per_day"] == "3.00"


async def test_a_rolling_month_lets_the_usage_of_30_days_ago_age_out(admin: httpx.AsyncClient, account: str,
                                                                    db: Database, clock: Clock) -> None:
    """$1 a day, every day, against a rolling 30 days with $0.50 left: as much ages out each day as comes in, so it
    is never reached (the usage of 29 and 30 days ago is history too, beyond the method's 28 days)."""
    await admin.post(f"/accounts/{account}/credits/topups", json={"amount_usd": "100", "idempotency_key": "seed"})
    await limited(admin, account)
    ledger = Ledger(db)
    for days_ago in range(32):
        at = NOW.replace(hour=1) - timedelta(days=days_ago)
        hold = uuid.uuid4()
        assert (await ledger.hold(hold, account, USD, at + timedelta(minutes=15), now=at)).ok
        await ledger.settle(hold, USD, now=at)
    limit = (await admin.put(f"/accounts/{account}/billing/spending-limit", json={
        "amount_usd": "30.50", "duration": "monthly", "strategy": "rolling"})).json()["result"]
    assert (limit["spent_usd"], limit["remaining_usd"]) == ("30.00", "0.50")
    assert limit["forecast"]["rate_usd_per_day"] == "1.00"
    assert limit["forecast"]["exhausted_at"] is None


def test_percentiles_interpolate() -> None:
    assert percentile([Decimal(v) for v in (1, 2, 3, 4, 5)], Decimal("0.5")) == 3
    assert percentile([Decimal(0)] * 29 + [Decimal(30)], Decimal("0.95")) == Decimal(0)
    assert percentile([Decimal(10), Decimal(20)], Decimal("0.95")) == Decimal("19.5")


async def test_anomalies_need_both_thresholds(admin: httpx.AsyncClient, account: str, db: Database,
                                              clock: Clock) -> None:
    rows = []
    for days in range(1, 31):
        at = NOW - timedelta(days=days)
        rows += [log_row(account, "default", at, cost="1", user=f"u{i}") for i in range(10)]
        rows.append(log_row(account, "default", at, cost="20", user="steady"))  # always big: not unusual
        rows.append(log_row(account, "default", at, cost="1", token="ci"))
    rows += [log_row(account, "default", NOW - timedelta(hours=1), cost=c, user=u)
             for u, c in (("u1", "30"), ("u2", "1.5"), ("steady", "25"))]
    rows.append(log_row(account, "prod", NOW - timedelta(hours=1), cost="40", token="ci"))
    await write(db, rows)
    result = (await admin.get(f"/accounts/{account}/analytics/anomalies")).json()["result"]
    assert result["from"] == "2026-11-12" and result["to"] == "2026-11-18"
    assert result["thresholds"] == {"identity_multiple": "2", "identity_percentile": "0.95",
                                    "account_percentile": "0.99", "baseline_days": 30}
    # u1: 30 > 2 x 1 and > the account's p99 (20); u2: 1.5 < 2 x 1; steady: 25 > p99 but < 2 x 20
    assert [(a["identity"], a["cost_usd"]) for a in result["anomalies"]] == [
        ({"cf.service_token": "ci"}, "40.00"), ({"cf.user_id": "u1"}, "30.00")]
    assert result["anomalies"][1] == {"identity": {"cf.user_id": "u1"}, "day": "2026-11-18", "cost_usd": "30.00",
                                      "requests": 1, "identity_p95_usd": "1.00", "account_p99_usd": "20.00",
                                      "threshold_usd": "20.00"}
    only_default = (await admin.get(f"/accounts/{account}/analytics/anomalies", params={"gateway": "default"}))
    assert [a["identity"] for a in only_default.json()["result"]["anomalies"]] == [{"cf.user_id": "u1"}]
    bad = await admin.get(f"/accounts/{account}/analytics/anomalies", params={"from": "2026-11-20", "to": "2026-11-01"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "to"
