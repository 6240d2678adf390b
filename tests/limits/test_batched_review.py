"""Review of the batched reservations (commit 3dc7ed5): cases where the batch must give what one-by-one gives."""

from __future__ import annotations

import asyncio
import uuid

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from gateway.limits.reservations import Limits, _bucket_lines, bucket_lines
from tests.limits.test_batched import NOW, USD, rule, spent_by_key


async def test_a_refused_reservation_replayed_in_the_same_batch_is_refused_again(db: Database) -> None:
    # one by one: the refused first call keeps nothing, so the second with the same id is refused as well. In one
    # batch, reserve_many answered the second `{"ok": true, "replay": true}`: granted, with nothing reserved.
    r = rule("1")
    limits = Limits(db, max_inflight=1)
    lines = bucket_lines([r], {}, NOW)
    rid = uuid.uuid4()
    first, again, other = await asyncio.gather(
        limits.reserve(lines, 2 * USD, now=NOW, reservation_id=rid),  # goes alone, over budget
        limits.reserve(lines, 2 * USD, now=NOW, reservation_id=rid),  # these two wait and go as one batch
        limits.reserve(lines, 2 * USD, now=NOW, reservation_id=rid),
    )
    assert not first.ok
    assert not again.ok and not other.ok
    assert (await spent_by_key(db, r)) == {"{}": (0, 0)}
    await assert_all_invariants(db)


async def test_a_granted_reservation_replayed_in_the_same_batch_is_reserved_once(db: Database) -> None:
    r = rule("10")
    limits = Limits(db, max_inflight=1)
    lines = bucket_lines([r], {}, NOW)
    rid = uuid.uuid4()
    outcomes = await asyncio.gather(*(limits.reserve(lines, USD, now=NOW, reservation_id=rid) for _ in range(3)))
    assert all(o.ok for o in outcomes)
    assert (await spent_by_key(db, r)) == {"{}": (0, USD)}
    await limits.settle(rid, USD, now=NOW)
    assert (await spent_by_key(db, r)) == {"{}": (USD, 0)}
    await assert_all_invariants(db)


def test_cached_lines_are_the_uncached_ones_for_equal_but_different_values() -> None:
    # 0.0 == -0.0 (same hash), but they are different split values: json gives different bucket keys
    r = rule("1", scope={"metadata.user": {"split": True}})
    for first, second in [(0.0, -0.0), ([0.0], [-0.0])]:
        bucket_lines([r], {"metadata.user": first}, NOW)
        cached = bucket_lines([r], {"metadata.user": second}, NOW)
        assert [line.key for line in cached] == [line.key for line in _bucket_lines([r], {"metadata.user": second},
                                                                                    NOW)]
