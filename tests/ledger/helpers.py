from __future__ import annotations

import uuid

from gateway.db import Database
from gateway.ledger import Ledger

USD = 1_000_000_000


def tenant_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def funded_tenant(db: Database, usd: int | float = 0, prefix: str = "t") -> tuple[Ledger, str]:
    ledger = Ledger(db)
    tenant = tenant_name(prefix)
    await db.pool.execute("INSERT INTO accounts (id) VALUES ($1)", tenant)
    await ledger.open_tenant(tenant)
    if usd:
        await ledger.top_up(tenant, int(usd * USD), f"seed-{tenant}")
    return ledger, tenant
