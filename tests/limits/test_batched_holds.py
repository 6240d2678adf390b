"""Credit holds in the batch (migration 0019): many tenants' holds and settlements share transactions with bucket
reservations, next to both sweepers, top-ups, the auto top-up worker and a spending limit, on three instances,
without a deadlock, an overdraft or a spending limit passed, and with every invariant after."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

from gateway.db import Database
from gateway.ledger.ledger import AutoTopUp, Ledger, SpendingLimit
from gateway.ledger.payments import AutoTopUps
from gateway.limits.invariants import assert_all_invariants
from gateway.limits.reservations import HoldRequest, Limits, bucket_lines
from tests.ledger.helpers import funded_tenant
from tests.limits.test_batched import rule

USD = 1_000_000_000


async def test_many_tenants_holds_in_batches_with_sweepers_and_top_ups(db: Database) -> None:
    now = datetime.now(UTC)
    tenants = [(await funded_tenant(db, 40, prefix="batch"))[1] for _ in range(5)]
    ledger = Ledger(db)
    await ledger.set_auto_topup(tenants[1], AutoTopUp(30 * USD, 10 * USD))
    await ledger.set_spending_limit(tenants[2], SpendingLimit(12 * USD, "daily", "fixed"))
    rules = [rule("100000"), rule("100000", window_type="rolling", scope={"metadata.user": {"split": True}}),
             rule("100000", scope={"metadata.tenant": {"split": True}}, alert_at=[0.5])]
    instances = [Limits(db, max_inflight=2, stall_after=0), Limits(db, max_inflight=3, stall_after=0), Limits(db)]
    errors: list[BaseException] = []
    granted = {t: 0 for t in tenants}
    refusals: dict[str, int] = {}

    async def request(n: int) -> None:
        tenant = tenants[n % len(tenants)]
        limits = instances[n % len(instances)]
        try:
            lines = bucket_lines(rules, {"metadata.user": f"u{n % 7}", "metadata.tenant": tenant}, now)
            outcome = await limits.reserve(lines, USD, hold=HoldRequest(tenant, USD, f"req-{n}"), now=now,
                                           ttl=timedelta(milliseconds=30 if n % 9 == 0 else 60_000))
            if not outcome.ok:
                assert outcome.credit_refusal is not None and not outcome.exceeded
                reason = outcome.credit_refusal.reason.value
                refusals[reason] = refusals.get(reason, 0) + 1
                return
            granted[tenant] += 1
            await asyncio.sleep(random.random() / 50)
            await limits.settle(outcome.reservation_id, random.choice([0, USD // 2, USD, USD + USD // 4]))
        except BaseException as exc:
            errors.append(exc)

    async def sweepers() -> None:
        for _ in range(15):
            try:
                await Limits(db).expire_overdue(now=datetime.now(UTC) + timedelta(milliseconds=50))
                await ledger.expire_due(now=datetime.now(UTC) + timedelta(milliseconds=50))
            except BaseException as exc:
                errors.append(exc)
            await asyncio.sleep(0.01)

    async def top_ups() -> None:
        worker = AutoTopUps(ledger)
        for i in range(10):
            try:
                await ledger.top_up(tenants[i % len(tenants)], USD, f"extra-{uuid.uuid4()}")
                await worker.run_once()
            except BaseException as exc:
                errors.append(exc)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(request(n) for n in range(300)), sweepers(), top_ups())
    assert not errors, errors[:3]
    # holds did share transactions: fewer reserve calls than reservations
    assert sum(i._reserves.calls for i in instances) < sum(i._reserves.items for i in instances)
    assert sum(i._settles.calls for i in instances) < sum(i._settles.items for i in instances)
    # the spending limit held: what was posted in its window is at most the limit
    usage = await ledger.spending_limit_usage(tenants[2])
    assert usage is not None and usage <= 12 * USD + USD // 4 * granted[tenants[2]], usage  # excess above a hold
    assert refusals.get("spending_limit", 0) > 0
    await ledger.expire_due(now=datetime.now(UTC) + timedelta(hours=2))
    await Limits(db).expire_overdue(now=datetime.now(UTC) + timedelta(hours=2))
    await assert_all_invariants(db)
    overdrawn = await db.pool.fetchval(
        "SELECT count(*) FROM ledger.accounts WHERE debits_must_not_exceed_credits "
        "AND debits_posted + debits_pending > credits_posted AND owner = ANY($1)", tenants)
    assert overdrawn == 0
    assert await db.pool.fetchval("SELECT count(*) FROM ledger.open_holds WHERE tenant = ANY($1)", tenants) == 0
