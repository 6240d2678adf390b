"""Every ledger operation and every refusal, one at a time, on a real Postgres."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from gateway.db import Database
from gateway.ledger import AutoTopUp, AutoTopUps, LedgerError, SpendingLimit
from gateway.ledger.invariants import assert_invariants
from tests.ledger.helpers import USD, funded_tenant

# ahead of real time, so that a seed top-up made at real "now" always comes first in a statement
NOW = (datetime.now(UTC) + timedelta(days=2)).replace(hour=12, minute=0, second=0, microsecond=0)
LATER = NOW + timedelta(minutes=15)


async def test_top_up_is_idempotent_by_key(db: Database) -> None:
    ledger, t = await funded_tenant(db)
    tid, replay = await ledger.top_up(t, 50 * USD, "order-1")
    again, replay2 = await ledger.top_up(t, 50 * USD, "order-1")
    assert tid == again and not replay and replay2
    assert (await ledger.balance(t)).posted_nano == 50 * USD
    with pytest.raises(LedgerError) as err:
        await ledger.top_up(t, 60 * USD, "order-1")
    assert err.value.reason == "id_conflict"
    assert (await ledger.balance(t)).posted_nano == 50 * USD
    await assert_invariants(db)


async def test_same_key_for_another_tenant_is_another_top_up(db: Database) -> None:
    ledger, a = await funded_tenant(db)
    _, b = await funded_tenant(db)
    ta, _ = await ledger.top_up(a, 1 * USD, "k")
    tb, _ = await ledger.top_up(b, 1 * USD, "k")
    assert ta != tb
    assert (await ledger.balance(b)).posted_nano == 1 * USD


async def test_top_up_of_unknown_tenant_and_bad_amounts(db: Database) -> None:
    ledger, t = await funded_tenant(db)
    with pytest.raises(LedgerError) as err:
        await ledger.top_up("nobody-here", USD, "x")
    assert err.value.reason == "unknown_account"
    for amount in (0, -5):
        with pytest.raises(LedgerError) as err:
            await ledger.top_up(t, amount, f"bad{amount}")
        assert err.value.reason == "invalid_amount"


async def test_hold_then_post_less_releases_the_rest(db: Database) -> None:
    ledger, t = await funded_tenant(db, 10)
    hid = uuid.uuid4()
    held = await ledger.hold(hid, t, 3 * USD, LATER, request_id="r1", now=NOW)
    assert held.ok and held.available_nano == 7 * USD
    bal = await ledger.balance(t)
    assert (bal.posted_nano, bal.pending_nano, bal.available_nano) == (10 * USD, 3 * USD, 7 * USD)
    result = await ledger.settle(hid, 2 * USD, now=NOW)
    assert result["ok"] and result["posted"] == 2 * USD and result["released"] == 1 * USD
    bal = await ledger.balance(t)
    assert (bal.posted_nano, bal.pending_nano) == (8 * USD, 0)
    rows = await ledger.statement(t)
    assert [(r.code, r.amount_nano, r.request_id) for r in rows] == [
        ("topup", 10 * USD, None),
        ("usage", -2 * USD, "r1"),
    ]
    await assert_invariants(db)


async def test_settle_resolves_at_most_once(db: Database) -> None:
    ledger, t = await funded_tenant(db, 10)
    hid = uuid.uuid4()
    await ledger.hold(hid, t, 3 * USD, LATER, now=NOW)
    assert (await ledger.settle(hid, 2 * USD, now=NOW))["ok"]
    replay = await ledger.settle(hid, 2 * USD, now=NOW)
    assert replay["ok"] and replay["replay"]
    other = await ledger.settle(hid, 1 * USD, now=NOW)
    assert not other["ok"] and other["reason"] == "already_resolved"
    voided = await ledger.void(hid, now=NOW)
    assert not voided["ok"]
    assert (await ledger.balance(t)).posted_nano == 8 * USD
    unknown = await ledger.settle(uuid.uuid4(), USD, now=NOW)
    assert unknown == {"ok": False, "reason": "unknown_hold"}
    await assert_invariants(db)


async def test_void_and_zero_cost_release_everything(db: Database) -> None:
    ledger, t = await funded_tenant(db, 5)
    a, b = uuid.uuid4(), uuid.uuid4()
    await ledger.hold(a, t, 2 * USD, LATER, now=NOW)
    await ledger.hold(b, t, 2 * USD, LATER, now=NOW)
    assert (await ledger.void(a, now=NOW))["kind"] == "void"
    assert (await ledger.settle(b, 0, now=NOW))["kind"] == "void"
    bal = await ledger.balance(t)
    assert (bal.posted_nano, bal.pending_nano) == (5 * USD, 0)
    assert await ledger.statement(t) != [] and all(r.code == "topup" for r in await ledger.statement(t))
    await assert_invariants(db)


async def test_hold_refused_when_credit_does_not_cover(db: Database) -> None:
    ledger, t = await funded_tenant(db, 1)
    refused = await ledger.hold(uuid.uuid4(), t, 2 * USD, LATER, now=NOW)
    assert not refused.ok and refused.reason == "insufficient_credit" and refused.available_nano == USD
    assert (await ledger.balance(t)).pending_nano == 0
    unknown = await ledger.hold(uuid.uuid4(), "no-such-tenant", USD, LATER, now=NOW)
    assert unknown.reason == "unknown_account"
    await assert_invariants(db)


async def test_hold_replay_and_conflict(db: Database) -> None:
    ledger, t = await funded_tenant(db, 10)
    hid = uuid.uuid4()
    assert (await ledger.hold(hid, t, USD, LATER, request_id="r", now=NOW)).ok
    replay = await ledger.hold(hid, t, USD, LATER, request_id="r", now=NOW)
    assert replay.ok and replay.replay
    assert (await ledger.balance(t)).pending_nano == USD
    conflict = await ledger.hold(hid, t, 2 * USD, LATER, request_id="r", now=NOW)
    assert not conflict.ok and conflict.reason == "id_conflict"
    await assert_invariants(db)


async def test_cost_above_hold_is_billed_from_credit_then_receivable(db: Database) -> None:
    ledger, t = await funded_tenant(db, 10)
    hid = uuid.uuid4()
    await ledger.hold(hid, t, 1 * USD, LATER, now=NOW)
    result = await ledger.settle(hid, 3 * USD, now=NOW)
    assert result["posted"] == USD and result["excess"] == {"billed": 2 * USD, "from": "credits"}
    assert (await ledger.balance(t)).posted_nano == 7 * USD
    # credit left 7: an excess of 9 cannot come from credit, so the tenant owes it (receivable), never dropped
    hid2 = uuid.uuid4()
    await ledger.hold(hid2, t, 6 * USD, LATER, now=NOW)
    result = await ledger.settle(hid2, 15 * USD, now=NOW)
    assert result["excess"] == {"billed": 9 * USD, "from": "receivable"}
    bal = await ledger.balance(t)
    assert bal.posted_nano == 1 * USD and bal.posted_nano >= 0
    receivable = await db.pool.fetchrow(
        "SELECT debits_posted, credits_posted FROM ledger.accounts WHERE code='receivable' AND owner=$1", t)
    assert receivable["debits_posted"] - receivable["credits_posted"] == 9 * USD
    usage_total = sum(-r.amount_nano for r in await ledger.statement(t) if r.code == "usage")
    assert usage_total == 3 * USD + 6 * USD  # the credits account paid these; 9 more is on the receivable
    await assert_invariants(db)


async def test_sweeper_expires_overdue_holds_and_late_settlement_still_bills(db: Database) -> None:
    ledger, t = await funded_tenant(db, 10)
    overdue, fresh = uuid.uuid4(), uuid.uuid4()
    await ledger.hold(overdue, t, 4 * USD, NOW + timedelta(seconds=1), now=NOW)
    await ledger.hold(fresh, t, 1 * USD, NOW + timedelta(hours=1), now=NOW)
    expired = await ledger.expire_due(now=NOW + timedelta(minutes=1))
    assert expired >= 1
    assert (await ledger.balance(t)).pending_nano == 1 * USD
    late = await ledger.settle(overdue, 2 * USD, now=NOW + timedelta(minutes=2))
    assert late["ok"] and late["kind"] == "late" and late["excess"]["billed"] == 2 * USD
    assert (await ledger.settle(overdue, 2 * USD, now=NOW + timedelta(minutes=2)))["excess"]["replay"]
    bal = await ledger.balance(t)
    assert bal.posted_nano == 8 * USD
    await ledger.void(fresh, now=NOW)
    await assert_invariants(db, after_sweep=True, now=NOW + timedelta(minutes=1))


async def test_a_late_settlement_counts_against_the_spending_limit_once(db: Database) -> None:
    """Billed after its hold expired, the cost still counts in the limit's window (as a limit set afterwards, which
    rebuilds the slices from the transfers, would count it), once: a replayed late settlement adds nothing."""
    ledger, t = await funded_tenant(db, 10)
    await ledger.set_spending_limit(t, SpendingLimit(100 * USD, "daily", "fixed"))
    overdue = uuid.uuid4()
    assert (await ledger.hold(overdue, t, 4 * USD, NOW + timedelta(seconds=1), now=NOW)).ok
    await ledger.expire_due(now=NOW + timedelta(minutes=1))
    assert await ledger.spending_limit_usage(t, now=NOW + timedelta(minutes=2)) == 0
    late = await ledger.settle(overdue, 3 * USD, now=NOW + timedelta(minutes=2))
    assert late["kind"] == "late"
    assert await ledger.spending_limit_usage(t, now=NOW + timedelta(minutes=3)) == 3 * USD
    assert (await ledger.settle(overdue, 3 * USD, now=NOW + timedelta(minutes=2)))["excess"]["replay"]
    assert await ledger.spending_limit_usage(t, now=NOW + timedelta(minutes=3)) == 3 * USD
    await assert_invariants(db, after_sweep=True, now=NOW + timedelta(minutes=1))


async def test_check_constraint_refuses_overdraft_even_outside_the_functions(db: Database) -> None:
    _, t = await funded_tenant(db, 1)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.pool.execute(
            "UPDATE ledger.accounts SET debits_posted = debits_posted + $2 WHERE code='credits' AND owner=$1",
            t, 2 * USD)


async def test_auto_topup_posts_once_per_crossing_through_receivable(db: Database) -> None:
    ledger, t = await funded_tenant(db, 20)
    await ledger.set_auto_topup(t, AutoTopUp(10 * USD, 50 * USD))
    worker = AutoTopUps(ledger)
    h1 = uuid.uuid4()
    await ledger.hold(h1, t, 5 * USD, LATER, now=NOW)  # available 15: above threshold
    await ledger.settle(h1, 5 * USD, now=NOW)
    assert await worker.run_once() == 0
    h2 = uuid.uuid4()
    await ledger.hold(h2, t, 6 * USD, LATER, now=NOW)  # available 15 -> 9: crossing
    await ledger.settle(h2, 6 * USD, now=NOW)
    h3 = uuid.uuid4()
    await ledger.hold(h3, t, 1 * USD, LATER, now=NOW)  # still below: no second crossing
    await ledger.settle(h3, 1 * USD, now=NOW)
    assert await worker.run_once() == 1
    assert await worker.run_once() == 0
    bal = await ledger.balance(t)
    assert bal.posted_nano == (20 - 5 - 6 - 1 + 50) * USD
    codes = [r.code for r in await ledger.statement(t)]
    assert codes.count("auto_topup") == 1
    receivable = await db.pool.fetchval(
        "SELECT debits_posted FROM ledger.accounts WHERE code='receivable' AND owner=$1", t)
    assert receivable == 50 * USD
    await ledger.set_auto_topup(t, None)
    assert (await ledger.balance(t)).auto_topup is None
    await assert_invariants(db)


async def test_failing_payment_method_retries_later_and_never_loads_twice(db: Database) -> None:
    ledger, t = await funded_tenant(db, 11)
    await ledger.set_auto_topup(t, AutoTopUp(10 * USD, 5 * USD))
    calls: list[uuid.UUID] = []

    class Flaky:
        async def charge(self, tenant: str, amount: int, key: uuid.UUID):  # type: ignore[no-untyped-def]
            calls.append(key)
            if len(calls) == 1:
                raise RuntimeError("processor down")
            from gateway.ledger import Charge
            return Charge("ch_1", await ledger.account_id("funding"))

    worker = AutoTopUps(ledger, Flaky())
    hid = uuid.uuid4()
    await ledger.hold(hid, t, 2 * USD, LATER, now=NOW)
    assert await worker.run_once() == 0
    await db.pool.execute("UPDATE ledger.auto_topups SET next_attempt_at = now() WHERE tenant = $1", t)
    assert await worker.run_once() == 1
    assert len(calls) == 2 and calls[0] == calls[1]  # same idempotency key on the retry
    await ledger.void(hid, now=NOW)
    assert (await ledger.balance(t)).posted_nano == 16 * USD
    await assert_invariants(db)


@pytest.mark.parametrize("strategy", ["fixed", "rolling"])
async def test_account_spending_limit_is_checked_in_the_hold(db: Database, strategy: str) -> None:
    ledger, t = await funded_tenant(db, 100)
    # spend before the limit exists still counts once it is set (slices rebuilt from transfers)
    now = datetime.now(UTC)
    h0 = uuid.uuid4()
    await ledger.hold(h0, t, 3 * USD, now + timedelta(minutes=5), now=now)
    await ledger.settle(h0, 3 * USD, now=now)
    await ledger.set_spending_limit(t, SpendingLimit(10 * USD, "daily", strategy))  # type: ignore[arg-type]
    assert await ledger.spending_limit_usage(t, now=now) == 3 * USD
    ok = await ledger.hold(uuid.uuid4(), t, 4 * USD, now + timedelta(minutes=5), now=now)
    assert ok.ok  # 3 spent + 4 pending
    refused = await ledger.hold(uuid.uuid4(), t, 4 * USD, now + timedelta(minutes=5), now=now)
    assert not refused.ok and refused.reason == "spending_limit"
    assert refused.detail and refused.detail["spent"] == 3 * USD and refused.detail["pending"] == 4 * USD
    fits = await ledger.hold(uuid.uuid4(), t, 3 * USD, now + timedelta(minutes=5), now=now)
    assert fits.ok
    # next window (fixed) / a day later (rolling): the old usage no longer counts
    tomorrow = now + timedelta(days=1, hours=2)
    assert await ledger.spending_limit_usage(t, now=tomorrow) == 0
    await ledger.set_spending_limit(t, None)
    assert (await ledger.balance(t)).spending_limit is None
    with pytest.raises(LedgerError):
        await ledger.set_spending_limit(t, SpendingLimit(10 * USD, "hourly", "fixed"))  # type: ignore[arg-type]
    await db.pool.execute("DELETE FROM ledger.open_holds WHERE tenant = $1 AND false", t)
    for row in await db.pool.fetch("SELECT hold_id FROM ledger.open_holds WHERE tenant = $1", t):
        await ledger.void(row["hold_id"])
    await assert_invariants(db)


async def test_spending_limit_reset_is_when_enough_spend_has_left_the_window(db: Database) -> None:
    """Fixed: the next calendar window. Rolling: hourly slices leave a day after their hour ends; the reset is when
    the oldest slices covering what must leave have left (all of them when even that is not enough)."""
    ledger, t = await funded_tenant(db, 100)
    await ledger.set_spending_limit(t, SpendingLimit(10 * USD, "daily", "rolling"))
    for hours_ago, spent in ((20, 2), (5, 3)):
        hid = uuid.uuid4()
        await ledger.hold(hid, t, spent * USD, NOW + timedelta(minutes=5), now=NOW - timedelta(hours=hours_ago))
        await ledger.settle(hid, spent * USD, now=NOW - timedelta(hours=hours_ago, minutes=-30))
    assert await ledger.spending_limit_usage(t, now=NOW) == 5 * USD

    def leaves(hours_ago: int) -> datetime:  # the slice of that hour stops counting a day after the hour ends
        return NOW - timedelta(hours=hours_ago) + timedelta(hours=1, days=1)

    assert await ledger.spending_limit_reset(t, "daily", "rolling", 1 * USD, now=NOW) == leaves(20)
    assert await ledger.spending_limit_reset(t, "daily", "rolling", 2 * USD, now=NOW) == leaves(20)
    assert await ledger.spending_limit_reset(t, "daily", "rolling", 3 * USD, now=NOW) == leaves(5)
    assert await ledger.spending_limit_reset(t, "daily", "rolling", 6 * USD, now=NOW) == leaves(0)
    later = NOW + timedelta(minutes=42)
    assert await ledger.spending_limit_reset(t, "daily", "fixed", USD, now=later) == NOW.replace(hour=0) + timedelta(
        days=1)
    monday = NOW.replace(hour=0) + timedelta(days=7 - NOW.weekday())
    assert await ledger.spending_limit_reset(t, "weekly", "fixed", USD, now=later) == monday
    assert await ledger.spending_limit_reset(t, "monthly", "fixed", USD, now=later) == (
        NOW.replace(day=1, hour=0) + timedelta(days=32)).replace(day=1)
    await assert_invariants(db)


async def test_statement_period_and_pagination(db: Database) -> None:
    ledger, t = await funded_tenant(db)
    for i in range(5):
        await ledger.top_up(t, USD, f"k{i}", now=NOW + timedelta(hours=i))
    rows = await ledger.statement(t, start=NOW + timedelta(hours=1), end=NOW + timedelta(hours=4))
    assert len(rows) == 3
    first = await ledger.statement(t, limit=2)
    second = await ledger.statement(t, limit=2, after=(first[-1].created_at, first[-1].id))
    assert len(second) == 2 and second[0].id not in {r.id for r in first}


async def test_reporting_role_reads_views_only(db: Database) -> None:
    _, t = await funded_tenant(db, 7)
    async with db.pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("SET LOCAL ROLE spendgate_reporting")
            row = await conn.fetchrow("SELECT * FROM reporting.balances WHERE account = $1", t)
            assert row["balance_usd"] == Decimal(7) and row["available_usd"] == Decimal(7)
            statement = await conn.fetch("SELECT * FROM reporting.statement WHERE account = $1", t)
            assert len(statement) == 1
            # amounts as an analyst reads them in psql: no trailing zeros (the views trim the scale)
            shown = await conn.fetchrow("SELECT balance_usd::text AS balance, pending_usd::text AS pending, "
                                        "(SELECT amount_usd::text FROM reporting.topups WHERE account = $1) AS topup "
                                        "FROM reporting.balances WHERE account = $1", t)
            assert dict(shown) == {"balance": "7", "pending": "0", "topup": "7"}
        for table in ("ledger.accounts", "ledger.transfers", "admin_tokens", "gateways"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute("SET LOCAL ROLE spendgate_reporting")
                    await conn.fetch(f"SELECT * FROM {table} LIMIT 1")
