"""The analytics endpoint's filters (the logs API's, by the same names): every figure is the sum of the log rows the
filters keep, whichever tables answer (the narrow rollups, the metadata rollups, the log itself), over ranges
aligned to the rollups' hours and days or not; and a filter keeps the same rows as the logs API's filter."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.analytics.queries import AnalyticsQuery, _columns
from gateway.analytics.store import Filters, path_for
from gateway.db import Database
from tests.analytics.conftest import NOW, log_row, write
from tests.analytics.test_analytics_api import FIGURES, dimension, figures, points, same


def traffic(account: str, seed: int, count: int = 700) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = []
    for _ in range(count):
        at = NOW - timedelta(seconds=rnd.randrange(35 * 86400))
        who = rnd.choice(["ada", "bob", "", None])
        rows.append(log_row(
            account, rnd.choice(["default", "prod"]), at, model=rnd.choice(["gpt-4o", "o3", "claude-sonnet-4.5"]),
            provider=rnd.choice(["openai", "anthropic"]), cost=rnd.choice([None, "0.000123456", "0.5", "3"]),
            user=who or None, token=None if who else rnd.choice(["ci-bot", None]),
            groups=rnd.choice([[], ["eng"], ["ml", "eng"], ["ml", "ml"]]) if who else None,
            metadata=rnd.choice([{}, {"team": "a"}, {"team": 7}, {"team": True, "env": "prod"}, {"team": None},
                                 {"team": "7", "env": "dev"}, {"env": ""}]),
            status=rnd.choice([200, 200, 429, 502]), billing_mode=rnd.choice(["byok", "unified"]),
            tokens=(rnd.randrange(1000), rnd.randrange(500))))
    return rows


def as_text(value: Any) -> str | None:
    """A metadata value as Postgres' `->>` reads it."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def kept(row: dict[str, Any], params: dict[str, str]) -> bool:
    identity = row["identity"] or {}
    for name, value in params.items():
        if name in ("provider", "model") and row[name] != value:
            return False
        if name == "status_code" and row["status_code"] != int(value):
            return False
        if name in ("user_id", "email", "service_token") and identity.get(name) != value:
            return False
        if name == "group" and value not in (identity.get("groups") or []):
            return False
        if name.startswith("metadata.") and as_text(row["metadata"].get(name[len("metadata."):])) != value:
            return False
    return True


def meta_value(row: dict[str, Any], name: str) -> list[Any]:
    """The dimension's values, a JSON null read as none."""
    return [None] if name.startswith("metadata.") and dimension(row, name) == [None] else dimension(row, name)


FILTERS: list[dict[str, str]] = [
    {},
    {"model": "o3"},
    {"provider": "anthropic", "status_code": "200"},
    {"user_id": "ada"},
    {"email": "bob@example.com", "model": "gpt-4o"},
    {"group": "ml"},
    {"service_token": "ci-bot"},
    {"metadata.team": "a"},
    {"metadata.team": "7"},  # the number 7 and the string "7"
    {"metadata.team": "true", "model": "o3"},
    {"metadata.cf.user_id": "bob"},
    {"metadata.env": ""},
]
GROUPINGS: list[tuple[list[str], str | None]] = [
    ([], None),
    (["model", "cf.user_id"], "day"),
    (["metadata.team"], None),
    (["metadata.team", "gateway"], "day"),
    (["metadata.env", "model"], None),
    (["cf.user.groups"], None),
    (["cf.user.groups", "metadata.team"], "week"),  # from the log: its groups read as the rollups hold them
]


async def check(admin: httpx.AsyncClient, account: str, rows: list[dict[str, Any]], filters: dict[str, str],
                group_by: list[str], interval: str | None, start: datetime, end: datetime,
                gateway: str | None = None) -> None:
    params: dict[str, Any] = {"from": start.isoformat(), "to": end.isoformat(), "limit": 1000, **filters}
    if group_by:
        params["group_by"] = ",".join(group_by)
    if interval:
        params["interval"] = interval
    if gateway:
        params["gateway"] = gateway
    answer = await admin.get(f"/accounts/{account}/analytics", params=params)
    assert answer.status_code == 200, answer.text
    result = answer.json()["result"]
    inside = [r for r in rows if start <= r["created_at"] < end and gateway in (None, r["gateway_id"])
              and kept(r, filters)]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in inside:
        keys: list[tuple[Any, ...]] = [()]
        for name in group_by:
            keys = [(*k, v) for k in keys for v in meta_value(row, name)]
        for key in keys:
            groups[key].append(row)
    assert same(result["totals"], figures(inside)), (params, result["totals"])
    got = {tuple(g["key"][name] for name in group_by): g for g in result["groups"]}
    assert set(got) == set(groups), (params, set(got) ^ set(groups))
    for key, members in groups.items():
        assert same(got[key], figures(members)), (params, key)
        if interval:
            assert sum(p["requests"] for p in got[key]["series"]) == len(members)
            assert sum(Decimal(p["cost_usd"]) for p in got[key]["series"]) == figures(members)["cost_usd"]
            wanted = points(members, interval)  # each point: the group's log rows in its hour, day or week
            assert set(wanted) <= {p["start"] for p in got[key]["series"]}
            for point in got[key]["series"]:
                assert same(point, wanted.get(point["start"], figures([]))), (params, key, point)


async def test_filters_keep_exactly_the_rows_they_name(admin: httpx.AsyncClient, account: str,
                                                       db: Database) -> None:
    rows = traffic(account, seed=41)
    await write(db, rows)
    ranges = [(NOW - timedelta(days=30, minutes=17, seconds=3), NOW - timedelta(minutes=5)),  # unaligned
              (datetime(2026, 10, 20, tzinfo=NOW.tzinfo), datetime(2026, 11, 18, tzinfo=NOW.tzinfo))]  # days
    for filters in FILTERS:
        for group_by, interval in GROUPINGS:
            for start, end in ranges:
                await check(admin, account, rows, filters, group_by, interval, start, end)
    await check(admin, account, rows, {"metadata.team": "a"}, ["metadata.team"], "hour",
                NOW - timedelta(days=2, minutes=3), NOW - timedelta(hours=1, seconds=9), gateway="prod")
    await check(admin, account, rows, {"model": "o3"}, ["cf.user.groups", "model"], "week", *ranges[0],
                gateway="default")


async def test_a_filter_keeps_the_rows_the_logs_api_lists(admin: httpx.AsyncClient, account: str,
                                                          db: Database) -> None:
    await write(db, traffic(account, seed=43, count=300))
    start, end = NOW - timedelta(days=40), NOW
    for filters in FILTERS[1:]:
        for gateway in ("default", "prod"):
            params = {"from": start.isoformat(), "to": end.isoformat(), "gateway": gateway, **filters}
            totals = (await admin.get(f"/accounts/{account}/analytics", params=params)).json()["result"]["totals"]
            listed = (await admin.get(f"/accounts/{account}/gateways/{gateway}/logs",
                                      params={**params, "limit": 500})).json()["result"]
            assert totals["requests"] == len(listed), filters
            assert Decimal(totals["cost_usd"]) == sum((Decimal(r["cost_usd"] or 0) for r in listed), Decimal(0))


@pytest.mark.parametrize(("group_by", "filters", "path"), [
    ("model,cf.user_id", {}, "narrow"),
    ("cf.user.groups", {"model": "o3", "group": "ml", "status_code": 200}, "narrow"),
    ("metadata.team", {}, "metadata"),
    ("metadata.team,gateway", {"metadata": (("team", "a"),)}, "metadata"),
    ("", {"metadata": (("team", "a"),)}, "metadata"),
    ("metadata.team,model", {}, "raw"),
    ("metadata.team", {"model": "o3"}, "raw"),
    ("metadata.team", {"metadata": (("env", "prod"),)}, "raw"),
    ("", {"metadata": (("cf.user_id", "ada"),)}, "raw"),
])
def test_which_tables_answer(group_by: str, filters: dict[str, Any], path: str) -> None:
    query = AnalyticsQuery("a", NOW - timedelta(days=30), NOW, None, tuple(g for g in group_by.split(",") if g),
                           filters=Filters(**filters))
    columns, key = _columns(query)
    assert path_for(query.filters, columns, key) == path


async def test_rollups_follow_every_statement(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    rows = traffic(account, seed=47, count=400)
    await write(db, rows)
    await write(db, rows[:150])  # written again (a retried batch): ON CONFLICT skips them, the rollups too
    start, end = NOW - timedelta(days=36), NOW
    await check(admin, account, rows, {}, ["model", "cf.user_id"], None, start, end)
    await check(admin, account, rows, {}, ["metadata.team"], None, start, end)
    gone = {r["id"] for r in rows[::4]}
    await db.pool.execute("DELETE FROM request_logs WHERE id = ANY($1::uuid[])", list(gone))
    rows = [r for r in rows if r["id"] not in gone]
    await db.pool.execute("UPDATE request_logs SET metadata = '{\"team\": \"z\"}', model = 'o3' WHERE id = $1",
                          rows[0]["id"])
    rows[0] = {**rows[0], "metadata": {"team": "z"}, "model": "o3"}
    for group_by in (["model", "cf.user_id"], ["metadata.team"], ["metadata.env"]):
        await check(admin, account, rows, {}, group_by, "day", start, end)
    # no key is left at zero: every rollup row sums at least one log row
    for table in ("hourly", "daily", "hourly_metadata", "daily_metadata"):
        assert await db.pool.fetchval(f"SELECT count(*) FROM analytics.{table} WHERE account_id = $1 AND "
                                      "requests <= 0", account) == 0
    await db.pool.execute("DELETE FROM request_logs WHERE account_id = $1", account)
    for table in ("hourly", "daily", "hourly_metadata", "daily_metadata"):
        assert await db.pool.fetchval(f"SELECT count(*) FROM analytics.{table} WHERE account_id = $1",
                                      account) == 0


async def test_the_forecast_follows_the_filters(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    await write(db, [log_row(account, "default", NOW - timedelta(days=d, hours=1), cost="2", model="o3")
                     for d in range(30)]
                + [log_row(account, "default", NOW - timedelta(days=d, hours=2), cost="1", model="gpt-4o",
                           metadata={"team": "a"}) for d in range(30)])
    rates = {}
    for filters in ({}, {"model": "o3"}, {"metadata.team": "a"}, {"model": "none"}):
        result = (await admin.get(f"/accounts/{account}/analytics", params=filters)).json()["result"]
        rates[tuple(filters.values())] = result["forecast"]["rate_usd_per_day"]
    assert rates == {(): "3.00", ("o3",): "2.00", ("a",): "1.00", ("none",): "0.00"}


@pytest.mark.parametrize(("params", "field"), [({"status_code": "20"}, "status_code"),
                                               ({"status_code": "abc"}, "status_code")])
async def test_invalid_filters_name_the_parameter(admin: httpx.AsyncClient, account: str, params: dict[str, str],
                                                  field: str) -> None:
    answer = await admin.get(f"/accounts/{account}/analytics", params=params)
    assert answer.status_code == 422 and answer.json()["error"]["field"] == field


def test_figures_are_the_names_of_the_api() -> None:
    assert FIGURES[-1] == "cost_usd"


@pytest.mark.parametrize("scope", [
    {"metadata.team": {"split": True}},  # one key: the metadata rollups
    {"metadata.team": {"split": True}, "model": {"split": True}},  # with another dimension: the log
    {"metadata.team": {"split": True}, "metadata.env": {"split": True}},  # two keys: the log
    {"cf.user.groups": {"split": True}, "provider": {"equals": "openai"}},  # the narrow rollups
])
async def test_rule_histories_equal_the_log(account: str, db: Database, scope: dict[str, Any]) -> None:
    from gateway.analytics.budgets import rule_histories
    from gateway.limits.rules import parse_rule

    rows = traffic(account, seed=53, count=400)
    await write(db, rows)
    rule = parse_rule("00000000-0000-0000-0000-000000000001",
                      {"name": "r", "budget_usd": "10", "window": "daily", "scope": scope})
    got = await rule_histories(db, account, "prod", rule, NOW)
    wanted: dict[str, dict[Any, int]] = defaultdict(lambda: defaultdict(int))
    start = NOW.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=28)
    for row in rows:
        if row["gateway_id"] != "prod" or not start <= row["created_at"] < NOW:
            continue
        identity = row["identity"] or {}
        attributes = {"provider": row["provider"], "model": f"{row['provider']}/{row['model']}",
                      "cf.user.groups": sorted(set(identity.get("groups") or [])) or None,
                      **{f"metadata.{k}": v for k, v in row["metadata"].items()}}
        for key in rule.bucket_keys(attributes):
            wanted[key][row["created_at"].date()] += int((row["cost_usd"] or 0) * 1_000_000_000)
    assert {k: dict(v) for k, v in got.items()} == {k: dict(v) for k, v in wanted.items()}
