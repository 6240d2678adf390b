"""Concurrency on one hot account, on a real Postgres; every test ends by checking the ledger invariants."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

from gateway.db import Database
from gateway.ledger import AutoTopUp, AutoTopUps, SpendingLimit
from gateway.ledger.invariants import assert_invariants
from tests.ledger.helpers import USD, funded_tenant


async def test_250_concurrent_holds_on_credit_that_covers_only_some(db: Database) -> None:
    ledger, t = await funded_tenant(db, 40)
    served: list[int] = []
    refused = 0

    async def request(i: int) -> None:
        nonlocal refused
        hid = uuid.uuid4()
        held = await ledger.hold(hid, t, USD, datetime.now(UTC) + timedelta(minutes=5), request_id=f"r{i}")
        if not held.ok:
            assert held.reason == "insufficient_credit"
            refused += 1
            return
        await asyncio.sleep(random.random() / 50)
        actual = random.randint(0, USD)
        await ledger.settle(hid, actual)
        served.append(actual)

    await asyncio.gather(*(request(i) for i in range(250)))
    bal = await ledger.balance(t)
    assert refused > 0 and len(served) >= 40 and len(served) + refused == 250
    assert bal.pending_nano == 0 and bal.posted_nano == 40 * USD - sum(served) >= 0
    await assert_invariants(db)


async def test_replays_of_the_same_ids_race_without_double_effects(db: Database) -> None:
    ledger, t = await funded_tenant(db, 100)
    ids = [uuid.uuid4() for _ in range(20)]
    now = datetime.now(UTC)
    for hid in ids:  # the same hold placed three times concurrently
        results = await asyncio.gather(
            *(ledger.hold(hid, t, USD, now + timedelta(minutes=5), request_id="same") for _ in range(3)),
            return_exceptions=True,
        )
        assert sum(1 for r in results if not isinstance(r, BaseException) and r.ok) >= 1
    assert (await ledger.balance(t)).pending_nano == 20 * USD
    settles = await asyncio.gather(*(ledger.settle(hid, USD // 2) for hid in ids for _ in range(3)))
    assert sum(1 for s in settles if s["ok"] and not s.get("replay")) == 20
    topups = await asyncio.gather(*(ledger.top_up(t, USD, "same-key") for _ in range(10)))
    assert len({tid for tid, _ in topups}) == 1 and sum(1 for _, replay in topups if not replay) == 1
    bal = await ledger.balance(t)
    assert bal.pending_nano == 0 and bal.posted_nano == 100 * USD - 10 * USD + USD
    await assert_invariants(db)


async def test_sweeper_racing_settlements_resolves_each_hold_exactly_once(db: Database) -> None:
    ledger, t = await funded_tenant(db, 1000)
    now = datetime.now(UTC)
    ids = [uuid.uuid4() for _ in range(200)]
    for hid in ids:
        assert (await ledger.hold(hid, t, USD, now - timedelta(seconds=1), now=now - timedelta(minutes=1))).ok

    async def sweep() -> int:
        return await ledger.expire_due(now=now)

    async def settle(hid: uuid.UUID) -> dict:  # type: ignore[type-arg]
        return await ledger.settle(hid, USD // 4, now=now)

    results = await asyncio.gather(sweep(), sweep(), *(settle(h) for h in ids))
    swept = results[0] + results[1]
    settled = [r for r in results[2:] if r["ok"] and r["kind"] == "post"]
    late = [r for r in results[2:] if r["ok"] and r["kind"] == "late"]
    assert swept + len(settled) == 200
    assert len(settled) + len(late) == 200  # every cost is billed: on its hold, or late after expiry
    resolutions = await db.pool.fetchval(
        "SELECT count(*) FROM ledger.transfers WHERE pending_id = ANY($1::uuid[])", ids)
    assert resolutions == 200
    bal = await ledger.balance(t)
    assert bal.pending_nano == 0 and bal.posted_nano == 1000 * USD - 200 * (USD // 4)
    await assert_invariants(db, after_sweep=True, now=now)


async def test_100_debits_crossing_the_threshold_post_exactly_one_auto_topup(db: Database) -> None:
    ledger, t = await funded_tenant(db, 120)
    await ledger.set_auto_topup(t, AutoTopUp(50 * USD, 200 * USD))
    workers = [AutoTopUps(ledger) for _ in range(3)]

    async def debit() -> None:
        hid = uuid.uuid4()
        held = await ledger.hold(hid, t, USD, datetime.now(UTC) + timedelta(minutes=5))
        assert held.ok
        await ledger.settle(hid, USD)

    await asyncio.gather(*(debit() for _ in range(100)))
    # three workers race (a running app's own worker may join them): exactly one top-up is posted
    posted = await asyncio.gather(*(w.run_once() for w in workers))
    assert sum(posted) <= 1
    rows = await db.pool.fetch("SELECT state FROM ledger.auto_topups WHERE tenant = $1", t)
    assert [r["state"] for r in rows] == ["posted"]
    assert (await ledger.balance(t)).posted_nano == (120 - 100 + 200) * USD
    await assert_invariants(db)


async def test_spending_limit_is_strict_under_a_burst(db: Database) -> None:
    ledger, t = await funded_tenant(db, 1000)
    await ledger.set_spending_limit(t, SpendingLimit(25 * USD, "daily", "rolling"))

    async def request() -> bool:
        hid = uuid.uuid4()
        held = await ledger.hold(hid, t, USD, datetime.now(UTC) + timedelta(minutes=5))
        if not held.ok:
            assert held.reason == "spending_limit"
            return False
        await asyncio.sleep(random.random() / 100)
        await ledger.settle(hid, USD)
        return True

    served = sum(await asyncio.gather(*(request() for _ in range(200))))
    assert served == 25
    assert await ledger.spending_limit_usage(t) == 25 * USD
    await assert_invariants(db)


async def test_many_tenants_in_parallel_do_not_deadlock(db: Database) -> None:
    tenants = [await funded_tenant(db, 5) for _ in range(8)]

    async def work(i: int) -> None:
        ledger, t = tenants[i % len(tenants)]
        hid = uuid.uuid4()
        if (await ledger.hold(hid, t, USD // 2, datetime.now(UTC) + timedelta(minutes=5))).ok:
            await ledger.settle(hid, random.choice([0, USD // 4, USD]))  # some above the hold

    await asyncio.wait_for(asyncio.gather(*(work(i) for i in range(300))), 60)
    await assert_invariants(db)
