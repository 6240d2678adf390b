"""Random sequences of ledger operations against a simple in-memory model (hypothesis state machine)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from gateway.db import Database
from gateway.ledger import Ledger, LedgerError
from gateway.ledger.invariants import check_invariants

USD = 1_000_000_000
amounts = st.integers(min_value=1, max_value=5 * USD)


def make_machine(db: Database, loop: asyncio.AbstractEventLoop) -> type[RuleBasedStateMachine]:
    def run(coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, loop).result(30)

    class LedgerMachine(RuleBasedStateMachine):
        holds = Bundle("holds")

        @initialize()
        def open(self) -> None:
            self.ledger = Ledger(db)
            self.tenant = f"sm-{uuid.uuid4().hex[:12]}"
            run(db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", self.tenant))
            run(self.ledger.open_tenant(self.tenant))
            self.posted = 0  # model: credits - debits, posted, from the tenant's point of view
            self.owed = 0  # billed to the receivable
            self.open: dict[uuid.UUID, int] = {}
            self.keys: dict[str, int] = {}
            self.now = datetime.now(UTC)

        @rule(amount=amounts, key=st.sampled_from(["a", "b", "c", "d"]))
        def top_up(self, amount: int, key: str) -> None:
            if key in self.keys and self.keys[key] != amount:
                with pytest.raises(LedgerError):
                    run(self.ledger.top_up(self.tenant, amount, key))
                return
            run(self.ledger.top_up(self.tenant, amount, key))
            if key not in self.keys:
                self.keys[key] = amount
                self.posted += amount

        @rule(target=holds, amount=amounts)
        def hold(self, amount: int) -> uuid.UUID:
            hid = uuid.uuid4()
            result = run(self.ledger.hold(hid, self.tenant, amount, self.now + timedelta(hours=1), now=self.now))
            available = self.posted - sum(self.open.values())
            assert result.ok == (amount <= available)
            if result.ok:
                self.open[hid] = amount
            return hid

        @rule(hid=holds, actual=st.integers(min_value=0, max_value=6 * USD))
        def settle(self, hid: uuid.UUID, actual: int) -> None:
            result = run(self.ledger.settle(hid, actual, now=self.now))
            if hid not in self.open:
                return  # refused hold or already resolved: nothing may change (checked by the invariant)
            amount = self.open.pop(hid)
            assert result["ok"]
            if actual == 0:
                return
            self.posted -= min(actual, amount)
            excess = actual - min(actual, amount)
            if excess:
                available = self.posted - sum(self.open.values())
                if excess <= available:
                    self.posted -= excess
                else:
                    self.owed += excess

        @rule(hid=holds)
        def void(self, hid: uuid.UUID) -> None:
            run(self.ledger.void(hid, now=self.now))
            self.open.pop(hid, None)

        @invariant()
        def matches_model(self) -> None:
            if not hasattr(self, "ledger"):
                return
            bal = run(self.ledger.balance(self.tenant))
            assert bal.posted_nano == self.posted
            assert bal.pending_nano == sum(self.open.values())
            assert bal.available_nano >= 0
            owed = run(db.pool.fetchval(
                "SELECT debits_posted - credits_posted FROM ledger.accounts WHERE code='receivable' AND owner=$1",
                self.tenant))
            assert owed == self.owed

        def teardown(self) -> None:
            if hasattr(self, "ledger"):
                assert run(check_invariants(db)) == []

    return LedgerMachine


async def test_random_operation_sequences_match_the_model(db: Database) -> None:
    loop = asyncio.get_running_loop()
    machine = make_machine(db, loop)
    config = settings(max_examples=25, stateful_step_count=30, deadline=None,
                      suppress_health_check=list(HealthCheck))
    # hypothesis drives the machine synchronously from a thread; each step runs on this test's loop
    await asyncio.to_thread(run_state_machine_as_test, machine, settings=config)
