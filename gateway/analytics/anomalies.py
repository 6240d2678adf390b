"""Unusual spend per identity: flags for people to look at; they never block a request.

An identity is a user (`cf.user_id`) or, for a request without one, a service token (`cf.service_token`).
A day's cost of an identity is flagged when it exceeds both

- `IDENTITY_MULTIPLE` (2) times that identity's `IDENTITY_PERCENTILE` (95th) percentile of daily cost over the
  `BASELINE_DAYS` (30) UTC days before that day (days without spend count as 0: a sudden spender stands out), and
- the account's `ACCOUNT_PERCENTILE` (99th) percentile of daily cost across all identities over the same 30 days
  (identity-days with spend only), so that small spend, however new, is never flagged.

An account with no identity-day of spend in those 30 days has no baseline: nothing is flagged. Percentiles are
interpolated between the nearest ranks (as Postgres' percentile_cont). Today is judged on its spend so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from gateway.analytics.queries import usd
from gateway.analytics.store import segment_sql, segments
from gateway.db import Database

IDENTITY_MULTIPLE = Decimal(2)
IDENTITY_PERCENTILE = Decimal("0.95")
ACCOUNT_PERCENTILE = Decimal("0.99")
BASELINE_DAYS = 30
DEFAULT_DAYS = 7


def percentile(values: list[Decimal], fraction: Decimal) -> Decimal:
    """Linear interpolation between the closest ranks (values need not be sorted; at least one)."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Anomaly:
    identity: dict[str, str]
    day: date
    cost: Decimal
    requests: int
    identity_p95: Decimal
    account_p99: Decimal

    def to_json(self) -> dict[str, Any]:
        return {"identity": self.identity, "day": self.day.isoformat(), "cost_usd": usd(self.cost),
                "requests": self.requests, "identity_p95_usd": usd(self.identity_p95),
                "account_p99_usd": usd(self.account_p99),
                "threshold_usd": usd(max(IDENTITY_MULTIPLE * self.identity_p95, self.account_p99))}


THRESHOLDS = {"identity_multiple": str(IDENTITY_MULTIPLE), "identity_percentile": str(IDENTITY_PERCENTILE),
              "account_percentile": str(ACCOUNT_PERCENTILE), "baseline_days": BASELINE_DAYS}


async def daily_costs(db: Database, account: str, start: datetime, end: datetime,
                      gateway: str | None = None) -> dict[tuple[str, str], dict[date, tuple[Decimal, int]]]:
    """(kind, identity) -> day -> (cost, requests), kind "cf.user_id" or "cf.service_token"."""
    args: list[Any] = [account]
    where = "account_id = $1"
    if gateway is not None:
        args.append(gateway)
        where += " AND gateway_id = $2"
    parts = []
    for seg in segments(start, end):
        args += [seg.start, seg.end]
        parts.append(segment_sql(seg, ["at", "user_id", "service_token", "requests", "cost_usd"], where,
                                 f"${len(args) - 1}", f"${len(args)}"))
    if not parts:
        return {}
    rows = await db.pool.fetch(
        f"""
        SELECT (date_trunc('day', s.at, 'UTC') AT TIME ZONE 'UTC')::date AS day,
               CASE WHEN s.user_id IS NOT NULL THEN 'cf.user_id' ELSE 'cf.service_token' END AS kind,
               coalesce(s.user_id, s.service_token) AS who, sum(s.cost_usd) AS cost, sum(s.requests) AS requests
          FROM ({' UNION ALL '.join(parts)}) s
         WHERE s.user_id IS NOT NULL OR s.service_token IS NOT NULL
         GROUP BY 1, 2, 3
        """, *args)
    out: dict[tuple[str, str], dict[date, tuple[Decimal, int]]] = {}
    for row in rows:
        out.setdefault((row["kind"], row["who"]), {})[row["day"]] = (row["cost"], int(row["requests"]))
    return out


async def find(db: Database, account: str, first: date, last: date, now: datetime,
               gateway: str | None = None) -> list[Anomaly]:
    """Flags for the days first..last (inclusive, UTC), highest cost first."""
    start = datetime.combine(first - timedelta(days=BASELINE_DAYS), time(), UTC)
    end = min(datetime.combine(last + timedelta(days=1), time(), UTC), now)
    costs = await daily_costs(db, account, start, end, gateway)
    found = []
    day = first
    while day <= last:
        baseline = [day - timedelta(days=i) for i in range(1, BASELINE_DAYS + 1)]
        everyone = [c for days in costs.values() for d in baseline if (c := days.get(d, (Decimal(0), 0))[0]) > 0]
        if everyone:
            account_p99 = percentile(everyone, ACCOUNT_PERCENTILE)
            for (kind, who), days in costs.items():
                cost, requests = days.get(day, (Decimal(0), 0))
                if cost <= account_p99:
                    continue
                own = percentile([days.get(d, (Decimal(0), 0))[0] for d in baseline], IDENTITY_PERCENTILE)
                if cost > IDENTITY_MULTIPLE * own:
                    found.append(Anomaly({kind: who}, day, cost, requests, own, account_p99))
        day += timedelta(days=1)
    return sorted(found, key=lambda a: (-a.cost, a.day, sorted(a.identity.items())))
