"""The pool gives connections back without asyncpg's reset query (gateway/db.py `_keep_session`): that is only
right while no code leaves session state on a pooled connection. This test keeps it so, by reading the code, and
checks that a connection given back is what the next caller expects."""

from __future__ import annotations

import re
from pathlib import Path

from gateway.db import Database

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"

# session state that would outlive a pooled call: LISTEN, session advisory locks, SET without LOCAL, cursors,
# temporary tables, prepared statements by name
FORBIDDEN = {
    "LISTEN (the config listener has its own connection)": re.compile(r"\bLISTEN\b(?!/)|add_listener\("),
    "a session advisory lock": re.compile(r"pg_advisory_lock\(|pg_try_advisory_lock\("),
    "SET outside a transaction (use SET LOCAL)": re.compile(
        r"[\"']\s*SET\s+(?!LOCAL\b)(?:SESSION\s+)?[a-z_.]+\s*(?:=|\bTO\b)", re.IGNORECASE),
    "a cursor held open": re.compile(r"\bDECLARE\s+\w+\s+(?:NO\s+)?(?:SCROLL\s+)?CURSOR\b.*WITH HOLD", re.IGNORECASE),
    "a temporary table": re.compile(r"CREATE\s+TEMP(?:ORARY)?\s+TABLE", re.IGNORECASE),
}
ALLOWED = {"gateway/gateways.py": {"LISTEN (the config listener has its own connection)"}}


def test_no_code_leaves_session_state_on_a_pooled_connection() -> None:
    found = []
    for path in sorted(GATEWAY.rglob("*.py")):
        relative = path.relative_to(GATEWAY.parent).as_posix()
        if relative.startswith("gateway/migrations/"):
            continue  # migrations run on their own connection, not the pool's
        text = path.read_text()
        for what, pattern in FORBIDDEN.items():
            if what in ALLOWED.get(relative, set()):
                continue
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{relative}:{line}: {what}")
    assert found == []


def test_the_scan_finds_what_it_looks_for() -> None:
    assert FORBIDDEN["SET outside a transaction (use SET LOCAL)"].search('await conn.execute("SET jit = off")')
    local = 'await conn.execute("SET LOCAL jit = off")'
    assert not FORBIDDEN["SET outside a transaction (use SET LOCAL)"].search(local)
    assert FORBIDDEN["a session advisory lock"].search("SELECT pg_advisory_lock(1)")
    assert not FORBIDDEN["a session advisory lock"].search("SELECT pg_advisory_xact_lock(1)")


async def test_a_connection_given_back_has_no_transaction_open(db: Database) -> None:
    conn = await db.pool.acquire()
    tx = conn.transaction()
    await tx.start()
    await conn.execute("SET LOCAL application_name = 'spendgate-test'")
    await db.pool.release(conn)  # asyncpg rolls back what the caller left open, even without the reset query
    async with db.pool.acquire() as again:
        assert not again.is_in_transaction()
        assert await again.fetchval("SHOW application_name") != "spendgate-test"
