"""Reserve the worst case before the call, settle the actual cost after it — one round trip each.

`Limits.reserve` turns the rules that apply to a request into bucket lines in a fixed order (rule id, key), so
that concurrent reservations lock rows in the same order and cannot deadlock, and calls `limits.reserve`. A
refusal names every blocking bucket that would overflow; the caller decides (429, or the fallback model).
`Limits.settle` is safe to call more than once: only the first call changes anything.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.db import Database
from gateway.limits.rules import Rule


@dataclass(frozen=True)
class BucketLine:
    rule: Rule
    key: str
    window_start: datetime  # fixed: the window; rolling: the slice the spend is recorded in
    rolling_since: datetime | None  # rolling: slices from here on count
    alert_window: datetime  # one alert per bucket, fraction and calendar window

    def as_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {
            "rule_id": self.rule.id,
            "key": self.key,
            "window_start": self.window_start.isoformat(),
            "budget": self.rule.budget_nano,
            "blocking": self.rule.action != "monitor",
            "alert_window": self.alert_window.isoformat(),
        }
        if self.rolling_since is not None:
            line["rolling_since"] = self.rolling_since.isoformat()
        if self.rule.alert_at:
            line["alert_at"] = [str(f) for f in self.rule.alert_at]
        return line


@dataclass(frozen=True)
class BucketState:
    line: BucketLine
    spent_nano: int
    pending_nano: int

    @property
    def remaining_nano(self) -> int:
        return self.line.rule.budget_nano - self.spent_nano - self.pending_nano


@dataclass(frozen=True)
class HoldRequest:
    """A unified-billing credit hold placed in the same transaction as the bucket reservations."""

    tenant: str
    amount_nano: int
    request_id: str | None = None


@dataclass
class Outcome:
    reservation_id: uuid.UUID
    ok: bool
    states: list[BucketState] = field(default_factory=list)  # before this reservation
    exceeded: list[BucketState] = field(default_factory=list)
    credit_refusal: dict[str, Any] | None = None
    estimate_nano: int = 0

    def remaining_after_nano(self) -> int | None:
        """What the tightest bucket has left after this reservation (None: no bucket matched)."""
        blocking = [s for s in self.states if s.line.rule.action != "monitor"] or self.states
        if not blocking:
            return None
        return min(s.remaining_nano for s in blocking) - (self.estimate_nano if self.ok else 0)


def bucket_lines(rules: list[Rule], attributes: dict[str, Any], now: datetime) -> list[BucketLine]:
    lines = []
    for rule in rules:
        window = rule.window
        alert_window = window.start(now) if window.type == "fixed" else _calendar_start(rule, now)
        since = window.counted_since(now) if window.type == "rolling" else None
        for key in rule.bucket_keys(attributes):
            lines.append(BucketLine(rule, key, window.start(now), since, alert_window))
    return sorted(lines, key=lambda line: (line.rule.id, line.key))


def _calendar_start(rule: Rule, now: datetime) -> datetime:
    from gateway.limits.windows import Window

    return Window(rule.window.name, "fixed").start(now)


class Limits:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def reserve(
        self,
        lines: list[BucketLine],
        estimate_nano: int,
        *,
        hold: HoldRequest | None = None,
        now: datetime | None = None,
        ttl: timedelta = timedelta(minutes=15),
        reservation_id: uuid.UUID | None = None,
    ) -> Outcome:
        if estimate_nano < 0:
            raise ValueError("estimate must not be negative")
        now = now or datetime.now(UTC)
        rid = reservation_id or uuid.uuid4()
        hold_json = None
        if hold is not None:
            hold_json = {"hold_id": str(rid), "tenant": hold.tenant, "amount": hold.amount_nano,
                         "request_id": hold.request_id}
        result = await self.db.pool.fetchval(
            "SELECT limits.reserve($1, $2, $3, $4, $5, $6)",
            rid, [line.as_json() for line in lines], estimate_nano, now, now + ttl, hold_json,
        )
        data = result if isinstance(result, dict) else json.loads(result)
        states = [BucketState(line, int(s["spent"]), int(s["pending"]))
                  for line, s in zip(lines, data.get("state", []), strict=False)]
        exceeded = [states[i] for i in data.get("exceeded", [])]
        return Outcome(rid, bool(data["ok"]), states, exceeded, data.get("credit"), estimate_nano)

    async def settle(self, reservation_id: uuid.UUID, actual_nano: int, *, outcome: str = "settled",
                     now: datetime | None = None) -> dict[str, Any]:
        result = await self.db.pool.fetchval(
            "SELECT limits.settle($1, $2, $3, $4)", reservation_id, actual_nano, outcome, now or datetime.now(UTC)
        )
        return result if isinstance(result, dict) else json.loads(result)  # type: ignore[no-any-return]

    async def expire_overdue(self, *, now: datetime | None = None, limit: int = 500) -> int:
        """Release reservations whose instance never settled them (it died): pending goes back, nothing is spent."""
        now = now or datetime.now(UTC)
        ids = await self.db.pool.fetch(
            "SELECT id FROM limits.reservations WHERE settled_at IS NULL AND expires_at < $1 "
            "ORDER BY expires_at LIMIT $2",
            now, limit,
        )
        expired = 0
        for row in ids:
            result = await self.settle(row["id"], 0, outcome="expired", now=now)
            expired += bool(result.get("ok"))
        return expired
