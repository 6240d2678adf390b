from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from gateway.cli import main
from gateway.db import Database


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() and code == 0 else None), err


async def test_cli_covers_accounts_credits_and_limits(db: Database, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", db.url)
    name = f"cli-{uuid.uuid4().hex[:8]}"

    def cli(*argv: str) -> tuple[int, object, str]:
        return run_cli(capsys, *argv)

    # main() runs its own event loop: keep it off this test's loop
    code, result, _ = await asyncio.to_thread(cli, "accounts", "create", name)
    assert code == 0 and result["id"] == name  # type: ignore[index]
    code, _, err = await asyncio.to_thread(cli, "accounts", "create", name)
    assert code == 1 and "already exists" in err
    code, result, _ = await asyncio.to_thread(cli, "credits", "topup", name, "50", "--idempotency-key", "k1")
    assert result["credits"]["balance_usd"] == "50.00"  # type: ignore[index]
    code, result, _ = await asyncio.to_thread(cli, "credits", "topup", name, "50", "--idempotency-key", "k1")
    assert result["replayed"] is True  # type: ignore[index]
    code, result, _ = await asyncio.to_thread(cli, "credits", "auto-topup", name, "--threshold", "5", "--amount", "20")
    assert result["auto_topup"] == {"threshold_usd": "5.00", "amount_usd": "20.00"}  # type: ignore[index]
    code, result, _ = await asyncio.to_thread(cli, "credits", "statement", name, "--json")
    assert [r["amount_usd"] for r in result] == ["50.00"]  # type: ignore[union-attr]
    code, result, _ = await asyncio.to_thread(cli, "billing", "spending-limit", name, "--amount", "30",
                                              "--duration", "daily")
    assert result["amount_usd"] == "30.00" and result["strategy"] == "fixed"  # type: ignore[index]
    code, result, _ = await asyncio.to_thread(cli, "billing", "spending-limit", name, "--off")
    assert code == 0
    code, result, _ = await asyncio.to_thread(cli, "credits", "show", name, "--json")
    assert result["available_usd"] == "50.00"  # type: ignore[index]
    code, _, err = await asyncio.to_thread(cli, "credits", "topup", name, "-3")
    assert code == 1 and "amount_usd" in err
    code, result, _ = await asyncio.to_thread(cli, "accounts", "list", "--json", "--limit", "500")
    assert name in [a["id"] for a in result]  # type: ignore[union-attr]
