"""The reservation functions (`limits.reserve`, `limits.settle`, migrations 0017 and 0019) against a small in-memory
model.

Hypothesis drives random sequences of:
- reserve: a batch of 1-4 requests over buckets of five rules (one for everything with alerts, one split per
  user, a rolling one with alerts, a monitor rule, one for a single model) and three rate limits (requests per
  fixed 10 minutes split per user, tokens per sliding hour, requests per sliding 20 minutes for one model: their
  lines take 1 or the request's token bound), some with a credit hold of one of two
  tenants (one with a daily spending limit, one with an auto top-up threshold); ids new, replayed, or twice in the
  batch; several holds, of one or both tenants, in one batch; requests naming the same lines of the batch, or
  equal lines at other positions;
- settle: a batch of 1-4 settlements, the actual cost at, below or above the estimate, the tokens used (or none
  given: the bound counts), of open, settled, expired or unknown reservations, or the same id twice;
- the sweeper: the clock moves on (minutes, or a day: windows close, rolling slices age) and
  `Limits.expire_overdue` expires what is overdue;

on a real Postgres, and the model beside it. After every step: each answer is the model's (granted or refused,
replay, every line's spent and pending, which lines overflowed, the credit refusal; settled, late, the reason,
how many alerts), the buckets, reservations, alerts and credit balance are the model's, and the limits' and the
ledger's invariants hold; each tenant's queued auto top-ups are the model's (one per crossing of the threshold while
none is pending). A batch the model says is malformed (an id twice) must be refused whole by the function, with
nothing changed.

The model is the functions' semantics spelled out one request after the other: a blocking line fits when
`spent + pending + take <= budget` (take: the estimate, 1 request or the token bound; spent: the fixed window's, or
the rolling window's slices from its start), a request is granted when all its lines fit and its credit hold is
granted, and keeps nothing otherwise. A rate line counts 1 or the tokens used at settlement, nothing when expired.

Its own database (the invariants read every row): SPENDGATE_FUZZ_EXAMPLES sequences (default 20) of up to 20 steps.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from gateway.db import Database, migrate
from gateway.ledger import Ledger
from gateway.ledger.invariants import check_invariants
from gateway.ledger.ledger import AutoTopUp, SpendingLimit
from gateway.limits.invariants import check_limit_invariants
from gateway.limits.rate_rules import rate_rules, validate
from gateway.limits.rates import rate_lines
from gateway.limits.reservations import BucketLine, Limits, bucket_lines
from gateway.limits.rules import Rule, parse_rule
from harness.pg import _admin, _with_database

# slow: its own database, and a failure's shrinking replays many sequences (minutes on a busy 2-core machine)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

MAX_EXAMPLES = int(os.environ.get("SPENDGATE_FUZZ_EXAMPLES", "20"))
USD = 1_000_000_000
QUARTER = USD // 4
CREDITS = 3 * USD
LIMIT = 5 * USD // 2  # the first tenant's daily (fixed) spending limit
THRESHOLD = 2 * USD  # the second tenant's auto top-up threshold (the worker does not run: top-ups stay queued)
START = (datetime.now(UTC) + timedelta(days=30)).replace(hour=12, minute=0, second=0, microsecond=0)

SPECS: list[dict[str, Any]] = [
    {"name": "all", "budget_usd": "20", "window": "daily", "alert_at": [0.5, 0.9]},
    {"name": "per-user", "budget_usd": "8", "window": "daily", "scope": {"metadata.user": {"split": True}}},
    {"name": "rolling", "budget_usd": "12", "window": "daily", "window_type": "rolling", "alert_at": [0.25, 0.75]},
    {"name": "watch", "budget_usd": "1", "window": "daily", "action": "monitor", "alert_at": [1]},
    {"name": "model-x", "budget_usd": "6", "window": "weekly", "scope": {"model": {"equals": "x"}}},
]
RATES: list[dict[str, Any]] = [
    {"name": "requests", "limit": 4, "interval_s": 600, "scope": {"metadata.user": {"split": True}}},
    {"name": "tokens", "limit": 3000, "interval_s": 3600, "technique": "sliding", "unit": "tokens"},
    {"name": "model-y", "limit": 3, "interval_s": 1200, "technique": "sliding", "scope": {"model": {"equals": "y"}}},
]


@pytest.fixture(scope="module")
async def model_db(database_url: str) -> AsyncIterator[Database]:
    name = f"spendgate_model_{uuid.uuid4().hex[:8]}"
    await _admin(database_url, f'CREATE DATABASE "{name}"')
    url = _with_database(database_url, name)
    try:
        await asyncio.to_thread(migrate, url)
        db = await Database.connect(url, min_size=1, max_size=4)
        try:
            yield db
        finally:
            await db.close()
    finally:
        await _admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


Row = tuple[str, str, datetime | None]  # rule id, key, window start (None: a rolling bucket's head row)


@dataclass
class Reservation:
    lines: list[BucketLine]
    estimate: int
    held: int | None  # the tenant (0 or 1) of its credit hold
    expires_at: datetime
    tokens: int = 0  # its token bound
    status: str = "open"  # open | settled | expired | late
    actual: int | None = None


@dataclass
class Model:
    rows: dict[Row, list[int]] = field(default_factory=dict)  # -> [spent, pending]
    reservations: dict[uuid.UUID, Reservation] = field(default_factory=dict)
    alerts: set[tuple[str, str, datetime, Decimal]] = field(default_factory=set)
    available: list[int] = field(default_factory=lambda: [CREDITS, CREDITS])  # per tenant: posted - pending
    receivable: list[int] = field(default_factory=lambda: [0, 0])  # billed beyond the credits
    topups: list[int] = field(default_factory=lambda: [0, 0])  # auto top-ups queued (the second tenant's)
    posted: list[tuple[datetime, int]] = field(default_factory=list)  # the first tenant's posted usage, for its limit

    def limit_refuses(self, now: datetime, amount: int) -> bool:
        """The first tenant's spending limit: what was posted today, its open holds and this one."""
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        spent = sum(actual for at, actual in self.posted if at >= day)
        pending = sum(r.estimate for r in self.reservations.values() if r.held == 0 and r.status == "open")
        return spent + pending + amount > LIMIT

    def row(self, row: Row) -> list[int]:
        return self.rows.setdefault(row, [0, 0])

    @staticmethod
    def lock_row(line: BucketLine) -> Row:
        return (line.rule.id, line.key, None if line.rolling_since is not None else line.window_start)

    def spent(self, line: BucketLine) -> int:
        if line.rolling_since is None:
            return self.row(self.lock_row(line))[0]
        return sum(v[0] for (rule, key, start), v in self.rows.items()
                   if rule == line.rule.id and key == line.key and start is not None and start >= line.rolling_since)

    @staticmethod
    def take(line: BucketLine, estimate: int, tokens: int) -> int:
        return {None: estimate, "requests": 1, "tokens": tokens}[line.unit]

    def reserve(self, rid: uuid.UUID, lines: list[BucketLine], estimate: int, held: int | None,
                expires_at: datetime, tokens: int, now: datetime) -> dict[str, Any]:
        if rid in self.reservations:
            return {"ok": True, "replay": True, "state": None, "exceeded": None, "credit": None}
        state = [(self.spent(line), self.row(self.lock_row(line))[1]) for line in lines]
        exceeded = [i + 1 for i, (line, (spent, pending)) in enumerate(zip(lines, state, strict=True))
                    if line.rule.action != "monitor"
                    and spent + pending + self.take(line, estimate, tokens) > line.budget]
        credit = None
        if not exceeded and held is not None:
            if self.available[held] < estimate:
                credit = "insufficient_credit"
            elif held == 0 and self.limit_refuses(now, estimate):
                credit = "spending_limit"
            else:
                self._debit(held, estimate)
        if exceeded or credit:
            return {"ok": False, "replay": False, "state": state, "exceeded": exceeded, "credit": credit}
        for line in lines:
            self.row(self.lock_row(line))[1] += self.take(line, estimate, tokens)
        self.reservations[rid] = Reservation(lines, estimate, held, expires_at, tokens)
        return {"ok": True, "replay": False, "state": state, "exceeded": [], "credit": None}

    def resolvable(self, rid: uuid.UUID, outcome: str) -> bool:
        r = self.reservations.get(rid)
        return r is not None and (r.status == "open" or (r.status == "expired" and outcome != "expired"))

    def settle(self, rid: uuid.UUID, actual: int, outcome: str, now: datetime,
               tokens: int | None = None) -> dict[str, Any]:
        r = self.reservations.get(rid)
        if not self.resolvable(rid, outcome):
            return {"ok": False, "reason": "unknown reservation" if r is None else "already settled",
                    "late": False, "alerts": 0}
        assert r is not None
        late = r.status == "expired"
        release = 0 if late else r.estimate
        r.status, r.actual = ("late" if late else outcome), actual
        alerts = 0
        for line in r.lines:
            freed, counted = release, actual
            if line.unit is not None:  # a rate limit: its 1 or its bound back; 1 or the tokens used count
                freed = 0 if late else self.take(line, r.estimate, r.tokens)
                counted = 0 if outcome == "expired" else 1 if line.unit == "requests" else \
                    r.tokens if tokens is None else tokens
            self.row(self.lock_row(line))[1] -= freed
            if line.rolling_since is None:
                self.row(self.lock_row(line))[0] += counted
            elif counted > 0:
                self.row((line.rule.id, line.key, line.window_start))[0] += counted
            total = self.spent(line)
            for f in line.rule.alert_at if counted > 0 else ():
                threshold = f * line.budget
                alert = (line.rule.id, line.key, line.alert_window, f)
                if total - counted < threshold <= total and alert not in self.alerts:
                    self.alerts.add(alert)
                    alerts += 1
        if r.held is not None:
            self._settle_hold(r.held, r.estimate, actual, late)
            if r.held == 0 and actual > 0:  # a post counts against the limit, its excess too, and a late one
                self.posted.append((now, actual))
        return {"ok": True, "reason": None, "late": late, "alerts": alerts}

    def _settle_hold(self, tenant: int, amount: int, actual: int, late: bool) -> None:
        if late:  # the hold expired already: the cost is billed as an unheld debit, if any
            self._bill(tenant, actual)
            return
        self.available[tenant] += amount - min(actual, amount)
        self._bill(tenant, max(actual - amount, 0))

    def _bill(self, tenant: int, amount: int) -> None:
        if amount <= self.available[tenant]:
            self._debit(tenant, amount)
        else:
            self.receivable[tenant] += amount

    def _debit(self, tenant: int, amount: int) -> None:
        """Take from the available credits; the second tenant queues an auto top-up when its balance crosses the
        threshold downwards (its worker does not run, so the first one stays queued and no other is queued)."""
        before = self.available[tenant]
        self.available[tenant] -= amount
        if tenant == 1 and before >= THRESHOLD > self.available[tenant] and amount > 0:
            self.topups[tenant] = 1


def make_machine(db: Database, loop: asyncio.AbstractEventLoop) -> type[RuleBasedStateMachine]:
    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    class ReservationModel(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.rules: list[Rule] = [parse_rule(str(uuid.uuid4()), spec) for spec in SPECS]
            self.rates = rate_rules(f"model-{uuid.uuid4().hex[:8]}", "g", validate(RATES))
            self.tenants = [f"model-{uuid.uuid4().hex[:12]}" for _ in range(2)]
            ledger = Ledger(db)
            for tenant in self.tenants:
                run(db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", tenant))
                run(ledger.open_tenant(tenant))
                run(ledger.top_up(tenant, CREDITS, f"seed-{tenant}"))
            run(ledger.set_spending_limit(self.tenants[0], SpendingLimit(LIMIT, "daily", "fixed")))
            run(ledger.set_auto_topup(self.tenants[1], AutoTopUp(THRESHOLD, 5 * USD)))
            self.model = Model()
            self.now = START
            self.known: list[uuid.UUID] = []  # every id used so far, granted or not

        def _id(self, data: st.DataObject, batch: list[uuid.UUID], *, settling: bool) -> uuid.UUID:
            """To reserve: mostly a new id; sometimes one seen before (a replay, or a refused one tried again) or
            one already in the batch. To settle: mostly an open reservation; sometimes a settled or expired one,
            an id never reserved, or one already in the batch."""
            reservations = self.model.reservations
            open_ = [rid for rid, r in reservations.items() if r.status == "open" and rid not in batch]
            closed = [rid for rid, r in reservations.items() if r.status != "open" and rid not in batch]
            pools = {"open": open_, "closed": closed, "known": self.known, "twice": batch}
            weights = {"open": 8, "closed": 2, "new": 1, "twice": 1} if settling else {"new": 8, "known": 2, "twice": 1}
            how = data.draw(st.sampled_from([k for k, w in weights.items() for _ in range(w) if pools.get(k, True)]))
            return uuid.uuid4() if how == "new" else data.draw(st.sampled_from(pools[how]))

        @rule(data=st.data())
        def reserve(self, data: st.DataObject) -> None:
            requests: list[tuple[Any, ...]] = []
            rows: list[tuple[Any, ...]] = []  # the batch's lines: a request names its own by position
            positions: dict[int, int] = {}
            expected: list[dict[str, Any]] = []
            ids: list[uuid.UUID] = []
            specs = []
            for _ in range(data.draw(st.integers(1, 4), label="requests")):
                rid = self._id(data, ids, settling=False)
                attributes = {"metadata.user": data.draw(st.sampled_from(["a", "b"])),
                              "model": data.draw(st.sampled_from(["x", "y"]))}
                lines = bucket_lines(self.rules, attributes, self.now) + rate_lines(self.rates, attributes, self.now)
                estimate = data.draw(st.integers(0, 12)) * QUARTER
                tokens = data.draw(st.sampled_from([0, 100, 700, 1500]), label="token bound")
                held = data.draw(st.sampled_from([None, None, None, 0, 1]))
                ttl = data.draw(st.sampled_from([timedelta(minutes=5), timedelta(minutes=30), timedelta(hours=3)]))
                shared = data.draw(st.sampled_from([True, True, False]))  # or the same lines again, elsewhere
                named = []
                for line in lines:
                    if not shared or id(line) not in positions:
                        rows.append(line.row)
                        positions[id(line)] = len(rows)
                    named.append(positions[id(line)])
                ids.append(rid)
                specs.append((rid, lines, estimate, held, self.now + ttl, tokens))
                requests.append((rid, estimate, self.now, self.now + ttl, named,
                                 None if held is None else (self.tenants[held], estimate, f"req-{rid}"), tokens))
            self.known.extend(i for i in ids if i not in self.known)
            if len(set(ids)) < len(ids):
                event("reserve: malformed batch refused")
                with pytest.raises(asyncpg.InvalidParameterValueError):
                    run(db.pool.fetch("SELECT * FROM limits.reserve($1, $2)", rows, requests))
                return
            answers = run(db.pool.fetch("SELECT * FROM limits.reserve($1, $2)", rows, requests))
            for spec in specs:
                expected.append(self.model.reserve(*spec, self.now))
            got = [{"ok": a["ok"], "replay": a["replay"],
                    "state": None if a["state"] is None else [(s["spent"], s["pending"]) for s in a["state"]],
                    "exceeded": a["exceeded"], "credit": a["credit"] and a["credit"]["reason"]} for a in answers]
            assert [a["id"] for a in answers] == ids
            assert got == expected
            for answer, spec in zip(expected, specs, strict=True):
                event("reserve: " + ("replay" if answer["replay"] else "granted" if answer["ok"] else
                                     "no credit" if answer["credit"] else "over budget"))
                if any(spec[1][i - 1].unit for i in answer["exceeded"] or ()):
                    event("reserve: over a rate limit")

        @rule(data=st.data())
        def settle(self, data: st.DataObject) -> None:
            settlements: list[tuple[Any, ...]] = []
            ids: list[uuid.UUID] = []
            for _ in range(data.draw(st.integers(1, 4), label="settlements")):
                rid = self._id(data, ids, settling=True)
                reserved = self.model.reservations.get(rid)
                estimate = reserved.estimate if reserved else USD
                actual = data.draw(st.sampled_from(["zero", "below", "equal", "above"]))
                amount = {"zero": 0, "below": estimate // 2, "equal": estimate,
                          "above": estimate + data.draw(st.integers(1, 8)) * QUARTER}[actual]
                used = data.draw(st.sampled_from([None, 0, 50, 800, 2000]), label="tokens used")
                ids.append(rid)
                settlements.append((rid, amount, "settled", self.now, used))
            if len(set(ids)) < len(ids):
                event("settle: malformed batch refused")
                with pytest.raises(asyncpg.InvalidParameterValueError):
                    run(db.pool.fetch("SELECT * FROM limits.settle($1)", settlements))
                return
            answers = run(db.pool.fetch("SELECT * FROM limits.settle($1)", settlements))
            expected = [self.model.settle(rid, amount, outcome, at, used)
                        for rid, amount, outcome, at, used in settlements]
            got = [{"ok": a["ok"], "reason": a["reason"], "late": a["late"], "alerts": a["alerts"]} for a in answers]
            assert [a["id"] for a in answers] == ids
            assert got == expected
            for answer in expected:
                event("settle: " + ("late" if answer["late"] else "settled" if answer["ok"] else answer["reason"]))
                if answer["alerts"]:
                    event("settle: alerted")

        @rule(step=st.sampled_from([timedelta(0), timedelta(minutes=10), timedelta(minutes=40),
                                    timedelta(days=1, minutes=5)]))
        def sweep(self, step: timedelta) -> None:
            self.now += step
            overdue = [rid for rid, r in self.model.reservations.items()
                       if r.status == "open" and r.expires_at < self.now]
            expired = run(Limits(db).expire_overdue(now=self.now))
            assert expired == len(overdue)
            for rid in overdue:  # pending goes back, nothing is spent, a credit hold is given back
                assert self.model.settle(rid, 0, "expired", self.now)["ok"]

        def teardown(self) -> None:
            if not hasattr(self, "model"):
                return
            try:  # the sweeper sees every sequence's reservations: leave none open, as the model says
                self.sweep(timedelta(days=400))
                self.the_database_is_the_model()
            finally:  # and after a failed sequence as well, so that it does not fail the next ones
                run(Limits(db).expire_overdue(now=self.now + timedelta(days=800), limit=10_000))

        @invariant()
        def the_database_is_the_model(self) -> None:
            if not hasattr(self, "model"):
                return
            rows = run(db.pool.fetch(
                "SELECT rule_id::text AS rule, key, CASE WHEN window_start = '-infinity' THEN NULL "
                "ELSE window_start END AS start, spent, pending FROM limits.buckets WHERE rule_id = ANY($1)",
                [uuid.UUID(r.id) for r in [*self.rules, *self.rates]]))
            found = {(r["rule"], r["key"], r["start"]): [r["spent"], r["pending"]] for r in rows}
            assert {k: v for k, v in found.items() if v != [0, 0]} == {
                k: v for k, v in self.model.rows.items() if v != [0, 0]}
            reservations = run(db.pool.fetch(
                "SELECT id, coalesce(outcome, 'open') AS status, actual FROM limits.reservations WHERE id = ANY($1)",
                self.known))
            assert {r["id"]: (r["status"], r["actual"]) for r in reservations} == {
                rid: (r.status, r.actual) for rid, r in self.model.reservations.items()}
            alerts = run(db.pool.fetch(
                "SELECT rule_id::text AS rule, key, window_start, fraction FROM limits.alerts WHERE rule_id = ANY($1)",
                [uuid.UUID(r.id) for r in self.rules]))
            assert {(a["rule"], a["key"], a["window_start"], a["fraction"]) for a in alerts} == self.model.alerts
            for n, tenant in enumerate(self.tenants):
                credits = run(db.pool.fetchrow(
                    "SELECT sum(credits_posted - debits_posted - debits_pending) FILTER (WHERE code = 'credits') "
                    "AS avail, coalesce(sum(debits_posted) FILTER (WHERE code = 'receivable'), 0) AS owed, "
                    "(SELECT count(*) FROM ledger.auto_topups WHERE tenant = $1) AS topups "
                    "FROM ledger.accounts WHERE owner = $1", tenant))
                assert (credits["avail"], credits["owed"], credits["topups"]) == (
                    self.model.available[n], self.model.receivable[n], self.model.topups[n])
            assert run(check_limit_invariants(db)) == []
            assert run(check_invariants(db)) == []

    return ReservationModel


async def test_reservations_follow_the_model(model_db: Database) -> None:
    machine = make_machine(model_db, asyncio.get_running_loop())
    config = settings(max_examples=MAX_EXAMPLES, stateful_step_count=20, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))
    # hypothesis drives the machine synchronously from a thread; each step runs on this test's loop
    await asyncio.to_thread(run_state_machine_as_test, machine, settings=config)
