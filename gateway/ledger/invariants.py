"""The ledger invariants as queries; every concurrency test ends with `assert_invariants`."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.db import Database
from gateway.ledger.sql import INVARIANTS, OVERDUE_HOLDS


async def check_invariants(db: Database, *, after_sweep: bool = False, now: datetime | None = None) -> list[str]:
    """Return the violated invariants (empty when all hold). With after_sweep, no hold may be overdue."""
    violations = []
    async with db.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        for name, query in INVARIANTS.items():
            rows = await conn.fetch(query)
            if rows:
                violations.append(f"{name}: {[dict(r) for r in rows[:5]]}")
        if after_sweep:
            rows = await conn.fetch(OVERDUE_HOLDS, now or datetime.now(UTC))
            if rows:
                violations.append(f"overdue holds left after the sweeper: {len(rows)}")
    return violations


async def assert_invariants(db: Database, **kwargs: object) -> None:
    violations = await check_invariants(db, **kwargs)  # type: ignore[arg-type]
    assert not violations, "ledger invariants violated:\n" + "\n".join(violations)
