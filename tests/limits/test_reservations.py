from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

from gateway.db import Database
from gateway.limits.invariants import check_limit_invariants
from gateway.limits.reservations import Limits, bucket_lines
from gateway.limits.rules import Rule, parse_rule

USD = 1_000_000_000
# noon, days ahead of real time: nothing reserved here is ever overdue for a real-time sweeper
NOW = (datetime.now(UTC) + timedelta(days=3)).replace(hour=12, minute=0, second=0, microsecond=0)
MIDNIGHT = NOW.replace(hour=0) + timedelta(days=1)


def make_rule(budget: str = "40", **spec: object) -> Rule:
    data: dict[str, object] = {"name": "r", "budget_usd": budget, "window": "daily", "window_type": "fixed"}
    data.update(spec)
    return parse_rule(str(uuid.uuid4()), data)


async def bucket_totals(db: Database, rule: Rule) -> tuple[int, int]:
    row = await db.pool.fetchrow(
        "SELECT coalesce(sum(spent),0)::bigint AS spent, coalesce(sum(pending),0)::bigint AS pending "
        "FROM limits.buckets WHERE rule_id = $1", uuid.UUID(rule.id))
    return row["spent"], row["pending"]


async def test_burst_of_300_never_overspends_and_leaves_nothing_pending(db: Database) -> None:
    limits = Limits(db)
    rule = make_rule("40")
    lines = bucket_lines([rule], {}, NOW)
    served = refused = 0

    async def request() -> None:
        nonlocal served, refused
        outcome = await limits.reserve(lines, 1 * USD, now=NOW)
        if not outcome.ok:
            refused += 1
            assert outcome.exceeded and outcome.exceeded[0].line.rule is rule
            return
        served += 1
        await asyncio.sleep(random.random() / 100)
        # actual cost never above the reservation when max_tokens is set
        await limits.settle(outcome.reservation_id, random.randint(USD // 2, USD), now=NOW)

    await asyncio.gather(*(request() for _ in range(300)))
    spent, pending = await bucket_totals(db, rule)
    assert spent <= 40 * USD
    assert pending == 0
    assert served >= 40 and served + refused == 300 and refused > 0
    open_ = await db.pool.fetchval(
        "SELECT count(*) FROM limits.reservations r, jsonb_array_elements(r.lines) l "
        "WHERE l->>'rule_id' = $1 AND settled_at IS NULL", rule.id)
    assert open_ == 0


async def test_all_or_nothing_across_buckets(db: Database) -> None:
    limits = Limits(db)
    roomy, tight = make_rule("100"), make_rule("1.5")
    lines = bucket_lines([roomy, tight], {}, NOW)
    first = await limits.reserve(lines, 1 * USD, now=NOW)
    assert first.ok
    second = await limits.reserve(lines, 1 * USD, now=NOW)
    assert not second.ok
    assert [s.line.rule.id for s in second.exceeded] == [tight.id]
    # the roomy bucket did not keep the refused reservation
    assert await bucket_totals(db, roomy) == (0, 1 * USD)
    assert first.remaining_after_nano() == int(0.5 * USD)


async def test_settle_is_exactly_once(db: Database) -> None:
    limits = Limits(db)
    rule = make_rule("10")
    outcome = await limits.reserve(bucket_lines([rule], {}, NOW), 2 * USD, now=NOW)
    results = await asyncio.gather(*(limits.settle(outcome.reservation_id, USD, now=NOW) for _ in range(20)))
    assert sum(r.ok for r in results) == 1
    assert {r.reason for r in results if not r.ok} == {"already settled"}
    assert await bucket_totals(db, rule) == (USD, 0)
    assert (await limits.settle(uuid.uuid4(), 1, now=NOW)).reason == "unknown reservation"


async def test_monitor_never_blocks_but_counts(db: Database) -> None:
    limits = Limits(db)
    rule = make_rule("1", action="monitor")
    lines = bucket_lines([rule], {}, NOW)
    for _ in range(3):
        outcome = await limits.reserve(lines, 1 * USD, now=NOW)
        assert outcome.ok
        await limits.settle(outcome.reservation_id, USD, now=NOW)
    assert await bucket_totals(db, rule) == (3 * USD, 0)


async def test_fixed_window_resets_at_midnight_utc(db: Database) -> None:
    limits = Limits(db)
    rule = make_rule("1")
    first = await limits.reserve(bucket_lines([rule], {}, NOW), USD, now=NOW)
    await limits.settle(first.reservation_id, USD, now=NOW)
    assert not (await limits.reserve(bucket_lines([rule], {}, NOW), 1, now=NOW)).ok
    tomorrow = MIDNIGHT + timedelta(seconds=1)
    assert (await limits.reserve(bucket_lines([rule], {}, tomorrow), USD, now=tomorrow)).ok


async def test_rolling_window_ages_spend_out_slice_by_slice(db: Database) -> None:
    limits = Limits(db)
    rule = make_rule("1", window_type="rolling")
    t0 = NOW
    first = await limits.reserve(bucket_lines([rule], {}, t0), USD, now=t0)
    await limits.settle(first.reservation_id, USD, now=t0)
    # midnight does not reset a rolling window
    t1 = MIDNIGHT + timedelta(minutes=5)
    assert not (await limits.reserve(bucket_lines([rule], {}, t1), 1, now=t1)).ok
    # 24 h later the slice still touches the window; one slice later it has aged out
    a_day_later = t0 + timedelta(days=1)
    assert not (await limits.reserve(bucket_lines([rule], {}, a_day_later), 1, now=a_day_later)).ok
    later = t0 + timedelta(days=1, minutes=30)
    assert (await limits.reserve(bucket_lines([rule], {}, later), USD, now=later)).ok


async def test_split_buckets_are_independent(db: Database) -> None:
    limits = Limits(db)
    rule = make_rule("1", scope={"metadata.user": {"split": True}})
    for user in ("alice", "bob"):
        lines = bucket_lines([rule], {"metadata.user": user}, NOW)
        assert (await limits.reserve(lines, USD, now=NOW)).ok
        assert not (await limits.reserve(lines, 1, now=NOW)).ok


async def test_alert_recorded_once_per_fraction_and_window(db: Database) -> None:
    limits = Limits(db)
    rule = make_rule("10", alert_at=[0.5, 0.9])
    lines = bucket_lines([rule], {}, NOW)
    for _ in range(10):
        outcome = await limits.reserve(lines, USD, now=NOW)
        await limits.settle(outcome.reservation_id, USD, now=NOW)
    rows = await db.pool.fetch("SELECT fraction, spent FROM limits.alerts WHERE rule_id = $1 ORDER BY fraction",
                               uuid.UUID(rule.id))
    assert [(str(r["fraction"]), r["spent"]) for r in rows] == [("0.5", 5 * USD), ("0.9", 9 * USD)]


async def test_expired_reservations_release_their_pending(db: Database) -> None:
    limits = Limits(db)
    rule = make_rule("1")
    outcome = await limits.reserve(bucket_lines([rule], {}, NOW), USD, now=NOW, ttl=timedelta(seconds=1))
    assert outcome.ok
    assert await limits.expire_overdue(now=NOW + timedelta(seconds=2)) >= 1
    assert await bucket_totals(db, rule) == (0, 0)
    # the call ends after its reservation expired: its cost is still recorded, once, and pending stays at zero
    late = await limits.settle(outcome.reservation_id, USD // 2, now=NOW + timedelta(seconds=3))
    assert late.ok and late.late
    assert await bucket_totals(db, rule) == (USD // 2, 0)
    again = await limits.settle(outcome.reservation_id, USD // 2, now=NOW + timedelta(seconds=3))
    assert not again.ok and again.reason == "already settled"
    assert await limits.expire_overdue(now=NOW + timedelta(seconds=4)) == 0
    assert await bucket_totals(db, rule) == (USD // 2, 0)
    assert not await check_limit_invariants(db)
