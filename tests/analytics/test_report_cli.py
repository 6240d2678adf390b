"""`spendgate report`: spend by any dimension, forecasts and anomalies as tables, or the API's JSON."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from gateway.cli import main
from gateway.db import Database
from tests.analytics.conftest import log_row, write


async def test_report_commands(admin: httpx.AsyncClient, account: str, db: Database,
                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", db.url)
    now = datetime.now(UTC)
    await write(db, [log_row(account, "prod", now - timedelta(hours=h), model=m, cost=c, user=u)
                     for h, m, c, u in ((1, "gpt-4o", "3.5", "ada"), (2, "o3", "1.25", "bob"), (30, "o3", "2", "ada"))])
    assert (await admin.post(f"/accounts/{account}/gateways/prod/spend-limits", json={
        "name": "daily", "budget_usd": "100", "window": "daily", "scope": {"cf.user_id": {"split": True}},
        "alert_at": ["forecast"]})).status_code == 201

    def cli(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await asyncio.to_thread(cli, "report", "spend", account, "--by", "model,cf.user_id", "-q")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == ["MODEL", "CF.USER_ID", "REQUESTS", "ERRORS", "TOKENS", "IN", "TOKENS", "OUT",
                                "COST", "USD"]
    assert lines[1].split()[:2] == ["gpt-4o", "ada"] and lines[1].split()[-1] == "3.50"
    assert "total 6.75 USD, 3 requests (0 errors)" in out and "forecast:" in out
    code, out, _ = await asyncio.to_thread(cli, "report", "spend", account, "--by", "model", "--json", "-q")
    assert code == 0 and json.loads(out)["totals"]["cost_usd"] == "6.75"
    code, out, _ = await asyncio.to_thread(cli, "report", "forecasts", account, "prod", "-q")
    assert code == 0 and "RATE USD/DAY" in out.splitlines()[0]
    code, out, _ = await asyncio.to_thread(cli, "report", "anomalies", account, "-q")
    assert code == 0 and "flags never block" in out
    code, _, err = await asyncio.to_thread(cli, "report", "spend", account, "--by", "colour", "-q")
    assert code == 1 and "group_by" in err
