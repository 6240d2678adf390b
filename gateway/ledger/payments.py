"""Auto top-up: the outbox the ledger fills, and the payment method that pays it.

When a hold or a debit takes a tenant's available balance below its threshold, the ledger's SQL queues one row
in `ledger.auto_topups` (a unique partial index allows one pending row per tenant, so a hundred concurrent debits
crossing together queue exactly one). `AutoTopUps.run_once` claims due rows with `FOR UPDATE SKIP LOCKED` (so
several instances never charge twice), asks the `PaymentMethod` to charge, and posts the top-up transfer whose id
is the outbox row's id: even a crash between the charge and the post cannot load twice, and the charge call gets
the same idempotency key on every retry, as real processors expect.

The built-in `ReceivablePaymentMethod` charges nothing outside: it records the charge against the tenant's
receivable account (the tenant owes it; an invoice settles it). A real processor implements `charge` and
returns the ledger account the money came from.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from gateway.db import log_failure
from gateway.errors import LedgerError
from gateway.ledger.ledger import Ledger

log = logging.getLogger("spendgate.ledger")


@dataclass(frozen=True)
class Charge:
    reference: str  # the processor's id of the charge
    funding_account: int  # ledger account the top-up is debited from


class PaymentMethod(Protocol):
    async def charge(self, tenant: str, amount_nano: int, idempotency_key: uuid.UUID) -> Charge:
        """Charge the tenant; raise to retry later. Must be idempotent on idempotency_key."""
        ...


class ReceivablePaymentMethod:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def charge(self, tenant: str, amount_nano: int, idempotency_key: uuid.UUID) -> Charge:
        await self.ledger.open_tenant(tenant)
        return Charge(f"receivable:{idempotency_key}", await self.ledger.account_id("receivable", tenant))


class AutoTopUps:
    def __init__(self, ledger: Ledger, payment_method: PaymentMethod | None = None, *, max_attempts: int = 8) -> None:
        self.ledger = ledger
        self.payment_method = payment_method or ReceivablePaymentMethod(ledger)
        self.max_attempts = max_attempts
        self._task: asyncio.Task[None] | None = None

    async def run_once(self, *, limit: int = 100) -> int:
        """Process due auto top-ups; returns how many were posted."""
        posted = 0
        for _ in range(limit):
            async with self.ledger.db.pool.acquire() as conn, conn.transaction():
                row = await conn.fetchrow(
                    "SELECT * FROM ledger.auto_topups WHERE state = 'pending' AND next_attempt_at <= now() "
                    "ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                )
                if row is None:
                    return posted
                try:
                    charge = await self.payment_method.charge(row["tenant"], row["amount"], row["id"])
                    credits = await self.ledger.account_id("credits", row["tenant"])
                    await self.ledger.transfer(row["id"], charge.funding_account, credits, row["amount"], "auto_topup")
                except (LedgerError, Exception) as exc:  # a processor's failure must not stop the others
                    attempts = row["attempts"] + 1
                    state = "failed" if attempts >= self.max_attempts else "pending"
                    log.warning("auto top-up %s for %s failed (%s): %s", row["id"], row["tenant"], attempts, exc)
                    await conn.execute(
                        "UPDATE ledger.auto_topups SET attempts = $2, state = $3, last_error = $4, "
                        "next_attempt_at = now() + $5::interval WHERE id = $1",
                        row["id"], attempts, state, str(exc)[:500], timedelta(seconds=min(2**attempts, 3600)),
                    )
                    continue
                await conn.execute(
                    "UPDATE ledger.auto_topups SET state = 'posted', attempts = attempts + 1, reference = $2, "
                    "posted_at = $3 WHERE id = $1",
                    row["id"], charge.reference, datetime.now(UTC),
                )
                posted += 1
        return posted

    def start(self, interval: float = 1.0) -> None:
        async def loop() -> None:
            while True:
                try:
                    await self.run_once()
                except Exception as exc:
                    log_failure(log, "auto top-up worker", exc)
                await asyncio.sleep(interval)

        self._task = asyncio.create_task(loop(), name="spendgate-auto-topups")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
