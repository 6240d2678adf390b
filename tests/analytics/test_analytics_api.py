"""GET /admin/accounts/{a}/analytics: every figure is the sum of the log rows it covers, whatever the grouping,
the range (aligned to the rollups' hours and days or not), the gateway filter, the "other" group and the CSV; and
still after more rows are added to the same rollup rows and after log rows are deleted or changed."""

from __future__ import annotations

import csv
import io
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway.db import Database
from tests.analytics.conftest import NOW, log_row, write

FIGURES = ("requests", "errors", "tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write", "cost_usd")


def traffic(account: str, seed: int, count: int = 900) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = []
    for _ in range(count):
        at = NOW - timedelta(seconds=rnd.randrange(40 * 86400))
        who = rnd.choice(["ada", "bob", "cy", None])
        rows.append(log_row(
            account, rnd.choice(["default", "prod"]), at, model=rnd.choice(["gpt-4o", "gpt-4o-mini", "o3"]),
            provider="openai", cost=rnd.choice([None, "0.000123456", "0.5", "1.25", "0.000000001"]), user=who,
            token=None if who else rnd.choice(["ci-bot", None]),
            groups=rnd.choice([[], ["eng"], ["eng", "ml"], ["ml", "ml"]]) if who else None,
            metadata=rnd.choice([{}, {"team": "a"}, {"team": 7}, {"team": True, "env": "prod"}]),
            status=rnd.choice([200, 200, 200, 429, 502]), billing_mode=rnd.choice(["byok", "unified"]),
            tokens=(rnd.randrange(1000), rnd.randrange(500))))
    return rows


def dimension(row: dict[str, Any], name: str) -> list[Any]:
    identity = row["identity"] or {}
    if name == "cf.user.groups":
        return sorted(set(identity.get("groups") or [])) or [None]
    value = {"provider": row["provider"], "model": row["model"], "gateway": row["gateway_id"],
             "billing_mode": row["billing_mode"], "status_code": row["status_code"],
             "cf.user_id": identity.get("user_id"), "cf.user.email": identity.get("email"),
             "cf.service_token": identity.get("service_token")}.get(name)
    if name.startswith("metadata."):
        value = row["metadata"].get(name[len("metadata."):])
    return [value]


def figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    cost = sum((r["cost_usd"] or Decimal(0) for r in rows), Decimal(0))
    return {"requests": len(rows), "errors": sum(not r["success"] for r in rows),
            "tokens_in": sum(r["tokens_in"] for r in rows), "tokens_out": sum(r["tokens_out"] for r in rows),
            "tokens_cache_read": 0, "tokens_cache_write": 0, "cost_usd": cost}


def grouped(rows: list[dict[str, Any]], start: datetime, end: datetime, group_by: list[str],
            gateway: str | None) -> tuple[list[dict[str, Any]], dict[tuple[Any, ...], list[dict[str, Any]]]]:
    inside = [r for r in rows if start <= r["created_at"] < end and gateway in (None, r["gateway_id"])]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in inside:
        keys: list[tuple[Any, ...]] = [()]
        for name in group_by:
            keys = [(*k, v) for k in keys for v in dimension(row, name)]
        for key in keys:
            groups[key].append(row)
    return inside, groups


def expected(rows: list[dict[str, Any]], start: datetime, end: datetime, group_by: list[str],
             gateway: str | None) -> tuple[dict[str, Any], dict[tuple[Any, ...], dict[str, Any]]]:
    inside, groups = grouped(rows, start, end, group_by, gateway)
    return figures(inside), {k: figures(v) for k, v in groups.items()}


def bucket(at: datetime, interval: str) -> datetime:
    at = at.astimezone(UTC)
    if interval == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if interval == "day" else day - timedelta(days=day.weekday())


def points(rows: list[dict[str, Any]], interval: str) -> dict[str, dict[str, Any]]:
    """Each bucket's figures, by the bucket's start as the API writes it."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        out[bucket(row["created_at"], interval).isoformat().replace("+00:00", "Z")].append(row)
    return {at: figures(v) for at, v in out.items()}


def same(answer: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all((Decimal(answer[f]) == wanted[f]) if f == "cost_usd" else answer[f] == wanted[f] for f in FIGURES)


CASES = [
    ([], None, None, 0, 0),
    (["model", "cf.user_id"], None, None, 0, 0),
    (["model", "cf.user_id"], 3, "day", 7, 0),
    (["cf.user.groups"], None, None, 13, 11),
    (["cf.user.groups", "model"], 2, "week", 0, 3),
    (["metadata.team", "status_code", "billing_mode"], 4, "hour", 0, 0),
    (["gateway", "provider", "cf.service_token", "cf.user.email"], None, "day", 29, 59),
    # series by user and model or by user and hour: ranked and summed from the rows as read (queries.unsummed)
    (["cf.user_id", "status_code", "metadata.team", "model"], 5, "day", 0, 0),
    (["cf.user_id"], 2, "hour", 0, 0),
    (["cf.user.groups", "cf.user.email", "model"], 4, "week", 7, 1),
]


async def check(admin: httpx.AsyncClient, account: str, rows: list[dict[str, Any]], gateway: str | None) -> None:
    for group_by, limit, interval, minute, second in CASES:
        start = NOW - timedelta(days=31, minutes=minute, seconds=second)
        end = NOW - timedelta(hours=2, seconds=second) if interval != "hour" else NOW - timedelta(days=25, minutes=1)
        params: dict[str, Any] = {"from": start.isoformat(), "to": end.isoformat()}
        if group_by:
            params["group_by"] = ",".join(group_by)
        if limit:
            params["limit"] = limit
        if interval:
            params["interval"] = interval
        if gateway:
            params["gateway"] = gateway
        answer = await admin.get(f"/accounts/{account}/analytics", params=params)
        assert answer.status_code == 200, answer.text
        result = answer.json()["result"]
        totals, groups = expected(rows, start, end, group_by, gateway)
        _, group_rows = grouped(rows, start, end, group_by, gateway)
        assert same(result["totals"], totals), (params, result["totals"], totals)
        ranked = sorted(groups.items(), key=lambda kv: (-kv[1]["cost_usd"], -kv[1]["requests"]))
        kept = ranked[:limit] if limit else ranked[:50]
        assert len(result["groups"]) == len(kept) + (len(ranked) > len(kept))
        for item, (key, wanted) in zip(result["groups"], kept, strict=False):
            assert item["key"] == dict(zip(group_by, key, strict=True)), (params, item["key"], key)
            assert same(item, wanted), (params, item, wanted)
        if len(ranked) > len(kept):
            other = result["groups"][-1]
            assert other["key"] == {"other": True}
            rest = [w for _, w in ranked[len(kept):]]
            assert same(other, {f: sum(w[f] for w in rest) for f in FIGURES}), (params, other)
        costs = [Decimal(g["cost_usd"]) for g in result["groups"][:len(kept)]]
        assert costs == sorted(costs, reverse=True)
        if "cf.user.groups" not in group_by:  # every request counts once: the groups add up to the totals
            assert same(result["totals"], {f: sum((Decimal(g[f]) if f == "cost_usd" else g[f])
                                                  for g in result["groups"]) for f in FIGURES})
        for i, group in enumerate(result["groups"]):
            if interval:  # each group's series adds up to the group, over every step of the range
                series = group["series"]
                assert [p["start"] for p in series] == sorted(p["start"] for p in series)
                assert sum(p["requests"] for p in series) == group["requests"]
                assert sum(Decimal(p["cost_usd"]) for p in series) == Decimal(group["cost_usd"])
                # and each point is the sum of the group's log rows in its hour, day or week
                mine = (group_rows[kept[i][0]] if i < len(kept) else
                        [r for key, _ in ranked[len(kept):] for r in group_rows[key]])
                wanted_points = points(mine, interval)
                zero = figures([])
                assert set(wanted_points) <= {p["start"] for p in series}
                for point in series:
                    assert same(point, wanted_points.get(point["start"], zero)), (params, group["key"], point)
            else:
                assert "series" not in group


async def test_sums_equal_the_log_rows(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    rows = traffic(account, seed=17)
    await write(db, rows)
    await check(admin, account, rows, None)
    await check(admin, account, rows, "prod")
    more = traffic(account, seed=18, count=200)  # added to the same rollup rows
    await write(db, more)
    rows += more
    await check(admin, account, rows, None)
    # rows leave the log (retention): the rollups lose them in the same transaction
    gone = {r["id"] for r in rows[::3]}
    await db.pool.execute("DELETE FROM request_logs WHERE id = ANY($1::uuid[])", list(gone))
    rows = [r for r in rows if r["id"] not in gone]
    await check(admin, account, rows, None)
    await check(admin, account, rows, "default")
    # a log row changed in place (an operator's fix): the rollups follow
    await db.pool.execute("UPDATE request_logs SET cost_usd = 2, model = 'o3' WHERE id = $1", rows[0]["id"])
    rows[0] = {**rows[0], "cost_usd": Decimal(2), "model": "o3"}
    await check(admin, account, rows, None)


async def test_csv_has_the_same_rows(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    rows = traffic(account, seed=5, count=300)
    await write(db, rows)
    params = {"group_by": "model,metadata.team", "limit": "2", "from": (NOW - timedelta(days=30)).isoformat(),
              "to": NOW.isoformat()}
    as_json = (await admin.get(f"/accounts/{account}/analytics", params=params)).json()["result"]
    answer = await admin.get(f"/accounts/{account}/analytics", params={**params, "format": "csv"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(answer.text)))
    assert len(lines) == len(as_json["groups"]) == 3
    for line, group in zip(lines, as_json["groups"], strict=True):
        assert line["other"] == ("true" if group["key"] == {"other": True} else "false")
        assert int(line["requests"]) == group["requests"] and line["cost_usd"] == group["cost_usd"]
        if line["other"] == "false":
            assert line["model"] == group["key"]["model"]
    series = await admin.get(f"/accounts/{account}/analytics", params={**params, "format": "csv", "interval": "day"})
    points = list(csv.DictReader(io.StringIO(series.text)))
    assert len(points) == 3 * 31 and sum(int(p["requests"]) for p in points) == as_json["totals"]["requests"]


async def test_defaults_shape_and_forecast(admin: httpx.AsyncClient, account: str, db: Database) -> None:
    await write(db, [log_row(account, "default", NOW - timedelta(days=d, hours=1), cost="2", billing_mode="unified")
                     for d in range(35)])
    result = (await admin.get(f"/accounts/{account}/analytics")).json()["result"]
    assert result["from"] == "2026-10-19T15:37:12Z" and result["to"] == "2026-11-18T15:37:12Z"
    assert result["interval"] is None
    assert result["totals"] == {"requests": 30, "errors": 0, "tokens_in": 300, "tokens_out": 150,
                                "tokens_cache_read": 0, "tokens_cache_write": 0, "cost_usd": "60.00"}
    assert result["groups"] == [{"key": {}, **result["totals"]}]
    # 2 USD a day; no credits: they are out already
    assert result["forecast"] == {"rate_usd_per_day": "2.00", "exhausted_at": "2026-11-18T15:37:12Z",
                                  "method": "trend-weekday-28d"}


@pytest.mark.parametrize(("params", "field"), [
    ({"group_by": "colour"}, "group_by"), ({"group_by": "model,model"}, "group_by"),
    ({"group_by": "metadata."}, "group_by"), ({"group_by": "metadata.cf.user_id"}, "group_by"),
    ({"interval": "minute"}, "interval"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit"),
    ({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "to"), ({"from": "yesterday"}, "from"),
    ({"from": "2026-11-01T00:00:00"}, "from"), ({"format": "xml"}, "format"), ({"gateway": "Bad Id"}, "gateway"),
    ({"interval": "hour", "from": "2020-01-01T00:00:00Z"}, "interval"),
])
async def test_invalid_queries_name_the_parameter(admin: httpx.AsyncClient, account: str, params: dict[str, str],
                                                  field: str) -> None:
    answer = await admin.get(f"/accounts/{account}/analytics", params=params)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


async def test_unknown_account_or_gateway_and_openapi(admin: httpx.AsyncClient, account: str) -> None:
    assert (await admin.get("/accounts/nobody-here/analytics")).status_code == 404
    assert (await admin.get(f"/accounts/{account}/analytics", params={"gateway": "staging"})).status_code == 404
    assert (await admin.get("/accounts/nobody-here/analytics/anomalies")).status_code == 404
    paths = (await admin.get("/openapi.json")).json()["paths"]
    assert "get" in paths["/admin/accounts/{account}/analytics"]
    assert "get" in paths["/admin/accounts/{account}/analytics/anomalies"]
    assert {"from", "to", "gateway", "group_by", "interval", "limit", "format"} <= {
        p["name"] for p in paths["/admin/accounts/{account}/analytics"]["get"]["parameters"]}


async def test_an_empty_range_and_an_account_without_logs(admin: httpx.AsyncClient, account: str) -> None:
    at = NOW.astimezone(UTC).isoformat()
    result = (await admin.get(f"/accounts/{account}/analytics",
                              params={"from": at, "to": at, "group_by": "model"})).json()["result"]
    assert result["totals"]["requests"] == 0 and result["groups"] == []
    result = (await admin.get(f"/accounts/{account}/analytics", params={"interval": "day"})).json()["result"]
    assert result["groups"] == [] and result["totals"]["cost_usd"] == "0.00"
