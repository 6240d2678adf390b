"""Settlements.drain at shutdown: every reservation still open is settled with its cost so far, together (in
batches, not one round trip each), and nothing is left."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from gateway.limits.reservations import Limits, bucket_lines
from gateway.limits.rules import parse_rule
from gateway.limits.settlements import Settlements

USD = 1_000_000_000
NOW = datetime.now(UTC)


async def opened(db: Database, count: int) -> tuple[Limits, Settlements, list[uuid.UUID]]:
    """`count` reservations open in a fresh instance's Settlements, the nth costing n * 1000 nano-USD so far."""
    rule = parse_rule(str(uuid.uuid4()), {"name": "r", "budget_usd": "1000", "window": "daily",
                                          "window_type": "fixed"})
    limits = Limits(db)
    settlements = Settlements(limits)
    lines = bucket_lines([rule], {}, NOW)
    ids = []
    for n in range(count):
        outcome = await limits.reserve(lines, USD, now=NOW, ttl=timedelta(hours=1))
        assert outcome.ok
        settlements.opened(outcome.reservation_id, lambda n=n: n * 1000)
        ids.append(outcome.reservation_id)
    return limits, settlements, ids


async def test_drain_settles_every_open_reservation_in_batches(db: Database) -> None:
    limits, settlements, ids = await opened(db, 40)
    calls = limits._settles.calls
    assert await settlements.drain(deadline_s=1.0) == 0
    assert limits._settles.calls - calls < 10  # 40 settlements in a few batches
    rows = await db.pool.fetch("SELECT id, actual, outcome FROM limits.reservations WHERE id = ANY ($1)", ids)
    assert {r["id"]: (r["actual"], r["outcome"]) for r in rows} == {
        rid: (n * 1000, "settled") for n, rid in enumerate(ids)}
    assert settlements.unsettled == 0
    await assert_all_invariants(db)


async def test_drain_past_its_deadline_counts_each_unsettled_reservation_once(db: Database) -> None:
    limits, settlements, ids = await opened(db, 5)
    assert await settlements.drain(deadline_s=0) == 5  # no time at all: every one is left to the sweeper, once
    for rid in ids:  # what the sweeper would do, so that nothing stays open in the shared database
        await limits.settle(rid, 0, now=NOW, outcome="expired")
    await assert_all_invariants(db)
