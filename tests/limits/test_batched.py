"""Batched reservations and settlements (limits.reserve / limits.settle over a batch, migrations 0017, 0019): the same
answers and the same money as one by one, under concurrency, mixed with batches of one (credit holds, the sweeper,
another instance), without deadlocks."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from gateway.limits.reservations import HoldRequest, Limits, Settled, bucket_lines
from gateway.limits.rules import Rule, parse_rule
from tests.ledger.helpers import funded_tenant

USD = 1_000_000_000
NOW = (datetime.now(UTC) + timedelta(days=3)).replace(hour=12, minute=0, second=0, microsecond=0)


def rule(budget: str, **spec: object) -> Rule:
    data: dict[str, object] = {"name": "r", "budget_usd": budget, "window": "daily", "window_type": "fixed"}
    data.update(spec)
    return parse_rule(str(uuid.uuid4()), data)


async def spent_by_key(db: Database, r: Rule) -> dict[str, tuple[int, int]]:
    rows = await db.pool.fetch("SELECT key, sum(spent)::bigint AS spent, sum(pending)::bigint AS pending "
                               "FROM limits.buckets WHERE rule_id = $1 GROUP BY key", uuid.UUID(r.id))
    return {row["key"]: (row["spent"], row["pending"]) for row in rows}


async def test_two_instances_burst_over_shared_and_split_buckets(db: Database) -> None:
    rules = [
        rule("60"),  # every request
        rule("25", window_type="rolling", scope={"metadata.user": {"split": True}}),
        rule("30", scope={"cf.user.groups": {"split": True}}, alert_at=[0.5]),
        rule("1", action="monitor", window="weekly"),
    ]
    instances = [Limits(db, max_inflight=2, stall_after=0), Limits(db)]  # two batches in flight at once, and one
    users = [("alice", ["eng"]), ("bob", ["eng", "ops"]), ("carol", [])]
    served = refused = 0

    async def request(n: int) -> None:
        nonlocal served, refused
        limits = instances[n % 2]
        user, groups = users[n % 3]
        lines = bucket_lines(rules, {"metadata.user": user, "cf.user.groups": groups}, NOW)
        outcome = await limits.reserve(lines, USD, now=NOW)
        if not outcome.ok:
            refused += 1
            assert outcome.exceeded and all(s.line.rule.action == "block" for s in outcome.exceeded)
            assert len(outcome.states) == len(lines)
            return
        served += 1
        await asyncio.sleep(random.random() / 200)
        await limits.settle(outcome.reservation_id, random.randint(USD // 2, USD), now=NOW)

    await asyncio.gather(*(request(n) for n in range(400)))
    assert served + refused == 400 and refused > 0 and served >= 25
    for r in rules:
        for key, (spent, pending) in (await spent_by_key(db, r)).items():
            assert pending == 0, (r.name, key)
            if r.action == "block":
                assert spent <= r.budget_nano, (r.raw, key, spent)
    # concurrent calls did share SQL calls
    assert sum(i._reserves.calls for i in instances) < sum(i._reserves.items for i in instances)
    await assert_all_invariants(db)


async def test_batched_with_credit_holds_and_the_sweeper_does_not_deadlock(db: Database) -> None:
    _, tenant = await funded_tenant(db, 1000)
    rules = [rule("1000"), rule("1000", window_type="rolling"), rule("1000", scope={"metadata.user": {"split": True}})]
    limits, other = Limits(db), Limits(db)
    errors: list[BaseException] = []

    async def request(n: int) -> None:
        try:
            lines = bucket_lines(rules, {"metadata.user": f"u{n % 4}"}, NOW)
            hold = HoldRequest(tenant, USD, f"req-{n}") if n % 3 == 0 else None
            outcome = await (limits if n % 2 else other).reserve(lines, USD, hold=hold, now=NOW,
                                                                 ttl=timedelta(milliseconds=20 if n % 5 == 0 else 600))
            assert outcome.ok
            await asyncio.sleep(random.random() / 20)
            await (limits if n % 2 else other).settle(outcome.reservation_id, USD // 2, now=NOW)
        except BaseException as exc:
            errors.append(exc)

    async def sweeper() -> None:
        for _ in range(10):
            await Limits(db).expire_overdue(now=NOW + timedelta(milliseconds=100))
            await asyncio.sleep(0.01)

    await asyncio.gather(*(request(n) for n in range(150)), sweeper())
    assert not errors, errors[:3]
    await assert_all_invariants(db)
    assert not await db.pool.fetchval("SELECT count(*) FROM limits.reservations r, jsonb_array_elements(r.lines) l "
                                      "WHERE settled_at IS NULL AND l->>'rule_id' = $1", rules[0].id)


async def test_alerts_through_concurrent_batched_settlements_are_the_sequential_ones(db: Database) -> None:
    for window_type in ("fixed", "rolling"):
        r = rule("10", window_type=window_type, alert_at=[0.5, 0.9])
        limits = Limits(db)
        lines = bucket_lines([r], {}, NOW)
        outcomes = await asyncio.gather(*(limits.reserve(lines, USD, now=NOW) for _ in range(10)))
        assert all(o.ok for o in outcomes)
        await asyncio.gather(*(limits.settle(o.reservation_id, USD, now=NOW) for o in outcomes))
        rows = await db.pool.fetch("SELECT fraction, spent FROM limits.alerts WHERE rule_id = $1 ORDER BY fraction",
                                   uuid.UUID(r.id))
        assert [(str(a["fraction"]), a["spent"]) for a in rows] == [("0.5", 5 * USD), ("0.9", 9 * USD)], window_type
        assert await spent_by_key(db, r) == {"{}": (10 * USD, 0)}


async def test_replay_in_a_batch_reserves_once(db: Database) -> None:
    r = rule("10")
    limits = Limits(db)
    rid = uuid.uuid4()
    lines = bucket_lines([r], {}, NOW)
    first, second, third = await asyncio.gather(*(limits.reserve(lines, USD, now=NOW, reservation_id=rid)
                                                  for _ in range(3)))
    assert first.ok and second.ok and third.ok
    assert await spent_by_key(db, r) == {"{}": (0, USD)}
    assert (await limits.settle(rid, USD, now=NOW)).ok
    assert await spent_by_key(db, r) == {"{}": (USD, 0)}


async def test_late_settlement_through_the_batch(db: Database) -> None:
    r = rule("1")
    limits = Limits(db)
    outcome = await limits.reserve(bucket_lines([r], {}, NOW), USD, now=NOW, ttl=timedelta(seconds=1))
    # the sweeper of another instance expires it; this instance settles afterwards (batched: no credit hold)
    assert await Limits(db).expire_overdue(now=NOW + timedelta(seconds=2)) >= 1
    assert await spent_by_key(db, r) == {"{}": (0, 0)}
    late = await limits.settle(outcome.reservation_id, USD // 2, now=NOW + timedelta(seconds=3))
    assert late.ok and late.late
    assert await spent_by_key(db, r) == {"{}": (USD // 2, 0)}
    again = await limits.settle(outcome.reservation_id, USD // 2, now=NOW + timedelta(seconds=3))
    assert again == Settled(False, "already settled")
    await assert_all_invariants(db)


async def test_a_cancelled_caller_leaves_nothing_reserved(db: Database) -> None:
    r = rule("10")
    limits = Limits(db, max_inflight=1)
    lines = bucket_lines([r], {}, NOW)
    busy = asyncio.create_task(limits.reserve(lines, USD, now=NOW))  # in flight
    queued = asyncio.create_task(limits.reserve(lines, USD, now=NOW))  # waits for the next batch
    await asyncio.sleep(0)
    queued.cancel()
    first = await busy
    sent = asyncio.create_task(limits.reserve(lines, USD, now=NOW))
    await asyncio.sleep(0)  # its batch is on the wire
    sent.cancel()
    await asyncio.gather(queued, sent, return_exceptions=True)
    query = ("SELECT count(*) FILTER (WHERE settled_at IS NOT NULL AND actual = 0), count(*) "
             "FROM limits.reservations r, jsonb_array_elements(r.lines) l WHERE l->>'rule_id' = $1")
    for _ in range(200):  # the grant that came back to nobody is released in the background
        if tuple(await db.pool.fetchrow(query, r.id)) == (1, 2):
            break
        await asyncio.sleep(0.01)
    assert tuple(await db.pool.fetchrow(query, r.id)) == (1, 2)  # the queued one never reached the database
    assert await spent_by_key(db, r) == {"{}": (0, USD)}  # only the first one holds its estimate
    await limits.settle(first.reservation_id, USD, now=NOW)
    assert await spent_by_key(db, r) == {"{}": (USD, 0)}
    await assert_all_invariants(db)


def test_bucket_lines_cache_follows_windows_and_values() -> None:
    fixed, rolling = rule("1", scope={"metadata.user": {"split": True}}), rule("1", window_type="rolling")
    rules = [fixed, rolling]

    def line_of(r: Rule, lines: list) -> object:  # type: ignore[type-arg]
        return next(line for line in lines if line.rule is r)

    a = bucket_lines(rules, {"metadata.user": "a"}, NOW)
    assert bucket_lines(rules, {"metadata.user": "a"}, NOW + timedelta(minutes=1)) == a
    assert bucket_lines(rules, {"metadata.user": "b"}, NOW) != a
    assert bucket_lines(rules, {"metadata.user": 1}, NOW) != bucket_lines(rules, {"metadata.user": True}, NOW)
    # the next rolling slice, and the day before (a clock that went back)
    later = bucket_lines(rules, {"metadata.user": "a"}, NOW + timedelta(minutes=31))
    assert line_of(rolling, later).window_start == line_of(rolling, a).window_start + timedelta(minutes=30)
    assert line_of(fixed, later) == line_of(fixed, a)
    before = bucket_lines(rules, {"metadata.user": "a"}, NOW - timedelta(days=1))
    assert line_of(fixed, before).window_start == line_of(fixed, a).window_start - timedelta(days=1)
    rules.append(rule("1"))  # the same list, changed in place
    assert len(bucket_lines(rules, {"metadata.user": "a"}, NOW)) == 3


async def test_a_batch_the_server_refuses_is_retried_one_by_one(db: Database) -> None:
    r = rule("10")
    limits = Limits(db, max_inflight=1)
    lines = bucket_lines([r], {}, NOW)
    outcomes = [await limits.reserve(lines, USD, now=NOW) for _ in range(4)]
    # the first settlement is alone in flight; the next three share a batch that one of them makes fail
    # (a negative cost, which the function refuses): the other two are still settled, one by one
    actuals = [USD, USD, -10 * USD, USD]
    results = await asyncio.gather(
        *(limits.settle(o.reservation_id, a, now=NOW) for o, a in zip(outcomes, actuals, strict=True)),
        return_exceptions=True)
    assert [r.ok if isinstance(r, Settled) else type(r).__name__ for r in results] == [
        True, True, "InvalidParameterValueError", True]
    assert await spent_by_key(db, r) == {"{}": (3 * USD, USD)}
    assert (await limits.settle(outcomes[2].reservation_id, USD, now=NOW)).ok
    await assert_all_invariants(db)


async def test_a_batch_stalled_on_a_lock_does_not_hold_other_tenants_back(db: Database) -> None:
    """Tenant A's credits row is locked by another transaction (an operator changing its spending limit, say):
    A's reservation waits for it. Tenant B's, arriving meanwhile, goes in another batch once A's has waited
    `stall_after`, and is answered while A still waits; with one batch allowed in flight it waits for A's lock."""
    (_, a), (_, b) = await funded_tenant(db, 10, "stall-a"), await funded_tenant(db, 10, "stall-b")
    loop = asyncio.get_running_loop()

    async def b_waits(limits: Limits, lock_s: float) -> tuple[float, bool]:
        blocker = await db.pool.acquire()
        locked = blocker.transaction()
        await locked.start()
        await blocker.execute("SELECT 1 FROM ledger.accounts WHERE code = 'credits' AND owner = $1 FOR UPDATE", a)

        async def release() -> None:
            await asyncio.sleep(lock_s)
            await locked.rollback()
            await db.pool.release(blocker)

        releasing = asyncio.create_task(release())
        first = asyncio.create_task(limits.reserve([], USD // 100, hold=HoldRequest(a, USD // 100)))
        await asyncio.sleep(0.1)
        start = loop.time()
        second = await asyncio.wait_for(limits.reserve([], USD // 100, hold=HoldRequest(b, USD // 100)), 10)
        waited, a_waiting = loop.time() - start, not first.done()
        await releasing
        assert (await first).ok and second.ok
        return waited, a_waiting

    waited, a_waiting = await b_waits(Limits(db), lock_s=1.5)
    assert waited < 0.5 and a_waiting
    waited, _ = await b_waits(Limits(db, max_inflight=1), lock_s=1.0)
    assert waited >= 0.8  # the same without the second batch: B waited for A's lock
    await assert_all_invariants(db)
