"""The log writer on a real Postgres: one poisoned row never costs the other rows of its batch (other tenants'
rows) their place, and is itself stored with what can be stored and a note in `error`.

Poisoned rows are built directly, as if the door (Attribution) or a provider adapter had let them through.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from gateway.db import Database
from gateway.logs.schema import COLUMNS
from gateway.logs.writer import BOOLEAN_COLUMNS, NOTE, LogWriter, clean_row

SECRET = "sk-live-secret-in-a-body-1234567890"


def good_row(account: str, gateway: str = "g", **overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update({c: False for c in BOOLEAN_COLUMNS})  # flags the table requires, whichever exist
    row.update(
        id=uuid.uuid4(), account_id=account, gateway_id=gateway, created_at=datetime.now(UTC),
        provider="openai", model="gpt-4o-mini", path="/v1/chat/completions", status_code=200, success=True,
        cached=False, step=0, duration_ms=Decimal("12.5"), ttfb_ms=Decimal("3.25"), tokens_in=3, tokens_out=5,
        cost_usd=Decimal("0.000123"), custom_cost=False, billing_mode="byok", zdr_applied=False,
        identity={"user_id": "u1", "email": "u1@example.com", "groups": ["eng"], "service_token": None},
        metadata={"team": "ml", "n": 3}, request_size=50, response_size=80,
        request_body='{"model":"gpt-4o-mini"}', response_body='{"ok":true}',
    )
    row.update(overrides)
    return row


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


async def rows_by_id(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    found = await db.pool.fetch("SELECT * FROM request_logs WHERE id = ANY($1::uuid[])", ids)
    return {r["id"]: r for r in found}


async def write_batch(db: Database, poisoned: list[dict[str, Any]], good: int = 50) -> tuple[
        LogWriter, list[dict[str, Any]]]:
    """`good` rows of five tenants with the poisoned rows spread among them, written as one batch."""
    tenants = [f"adv-{uuid.uuid4().hex[:8]}" for _ in range(5)]
    rows = [good_row(tenants[i % 5], "g" if i % 2 else "other") for i in range(good)]
    for n, row in enumerate(poisoned):
        rows.insert((n + 1) * len(rows) // (len(poisoned) + 1), row)
    writer = LogWriter(db, batch=1000)
    for row in rows:
        writer.submit(row, None)
    assert await writer.flush()
    return writer, rows


# Each poison: the row's changes, and what the stored row must show (column -> value, and words of the note).
POISONS: dict[str, tuple[dict[str, Any], dict[str, Any], tuple[str, ...]]] = {
    "nul_in_metadata_string": ({"metadata": {"team": "a\x00b"}}, {"metadata": {"team": "a\ufffdb"}},
                               ("metadata", "U+FFFD")),
    "nan_in_metadata": ({"metadata": {"team": float("nan")}}, {"metadata": {"team": "NaN"}},
                        ("metadata", "non-finite", "NaN or Infinity")),
    "infinity_in_metadata": ({"metadata": {"n": float("inf"), "m": float("-inf")}},
                             {"metadata": {"n": "Infinity", "m": "-Infinity"}},
                             ("metadata", "non-finite", "NaN or Infinity")),
    "lone_surrogate_in_metadata_key_and_value": ({"metadata": {"t\ud800": "\udc00"}},
                                                 {"metadata": {"t\ufffd": "\ufffd"}}, ("metadata", "U+FFFD")),
    "nul_in_identity": ({"identity": {"user_id": "u\x00", "groups": ["a\x00"]}},
                        {"identity": {"user_id": "u\ufffd", "groups": ["a\ufffd"]}}, ("identity",)),
    "nul_in_model_and_path": ({"model": "gpt\x00-4o", "path": "/v1/\x00/x"},
                              {"model": "gpt\ufffd-4o", "path": "/v1/\ufffd/x"}, ("model", "path")),
    "nul_and_surrogate_in_bodies": ({"request_body": "a\x00b", "response_body": "x\ud83dy"},
                                    {"request_body": "a\ufffdb", "response_body": "x\ufffdy"},
                                    ("request_body", "response_body")),
    "nul_in_error": ({"error": "upstream said \x00", "success": False}, {}, ()),
    "integer_too_long_for_json": ({"metadata": {"n": 10**5000}}, {"metadata": {}, "identity": None,
                                                                  "request_body": None, "tokens_out": 5},
                                  ("metadata, identity and bodies dropped", "refused")),
    "metadata_nested_past_the_recursion_limit": ({"metadata": deep(5000)}, {"metadata": {}},
                                                 ("metadata, identity and bodies dropped", "refused")),
    "tokens_past_int4": ({"tokens_out": 2**40}, {"tokens_out": None, "metadata": {}, "status_code": 200},
                         ("only ids, time and status kept", "tokens_out", "int32")),
    "cost_past_its_numeric": ({"cost_usd": Decimal("1e30")}, {"cost_usd": None, "model": None},
                              ("only ids, time and status kept", "numeric field overflow")),
}


@pytest.mark.parametrize("poison", POISONS.values(), ids=POISONS.keys())
async def test_one_poisoned_row_among_50_of_five_tenants(db: Database, poison: tuple[Any, ...]) -> None:
    changes, stored, note_words = poison
    bad = good_row("adv-poisoned", **changes)
    writer, rows = await write_batch(db, [bad])
    found = await rows_by_id(db, [r["id"] for r in rows])
    assert len(found) == 51, "every row of the batch is stored"
    assert writer.dropped == 0
    row = found[bad["id"]]
    for column, value in stored.items():
        assert row[column] == value, column
    assert "\x00" not in (row["error"] or "")
    if note_words:
        assert NOTE in row["error"]
        for word in note_words:
            assert word in row["error"], word
    else:
        assert row["error"] == "upstream said \ufffd"
    assert "1099511627776" not in (row["error"] or "")  # the refused value itself is not quoted
    good = [found[r["id"]] for r in rows if r is not bad]
    assert all(g["error"] is None and g["metadata"] == {"team": "ml", "n": 3} for g in good)


async def test_many_poisoned_rows_in_one_batch_are_each_kept(db: Database) -> None:
    poisoned = [good_row("adv-poisoned", **changes) for changes, _, _ in POISONS.values()]
    writer, rows = await write_batch(db, poisoned, good=200)
    found = await rows_by_id(db, [r["id"] for r in rows])
    assert len(found) == 200 + len(poisoned) and writer.dropped == 0


async def test_a_row_nothing_of_can_be_stored_is_dropped_counted_and_logged_without_its_data(
        db: Database, caplog: pytest.LogCaptureFixture) -> None:
    bad = good_row("adv-poisoned", created_at=None, request_body=SECRET, metadata={"key": SECRET})
    with caplog.at_level(logging.INFO, logger="spendgate.logs"):
        writer, rows = await write_batch(db, [bad])
    found = await rows_by_id(db, [r["id"] for r in rows])
    assert len(found) == 50 and bad["id"] not in found
    assert writer.dropped == 1
    dropped = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert [getattr(r, "request_id", None) for r in dropped] == [str(bad["id"])]
    assert all(SECRET not in r.getMessage() and SECRET not in str(r.args) for r in caplog.records)


async def test_retention_still_holds_when_a_batch_is_split(db: Database) -> None:
    """STOP_INSERTING counts per write, so rows written in halves stop at max_rows as in one batch."""
    account = f"adv-{uuid.uuid4().hex[:8]}"
    rows = [good_row(account) for _ in range(10)]
    rows.insert(3, good_row(account, metadata={"n": 10**5000}))
    writer = LogWriter(db)
    for row in rows:
        writer.submit(row, {"max_rows": 6, "strategy": "STOP_INSERTING"})
    assert await writer.flush()
    count = await db.pool.fetchval("SELECT count(*) FROM request_logs WHERE account_id = $1", account)
    assert count == 6 and writer.dropped == 0


def test_clean_rows_are_not_copied() -> None:
    """The happy path pays a scan, not a copy: a clean row (non-ASCII text included) comes back as itself."""
    row = good_row("adv-clean", model="gpt-4o-mini", metadata={"team": "caf\u00e9", "n": 1.5},
                   response_body="\u4e2d\u6587 \U0001f600")
    assert clean_row(row) is row
