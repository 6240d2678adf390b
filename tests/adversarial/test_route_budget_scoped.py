"""A dynamic route's `budget` element reads its rule where the `success` branch would spend (found by an
adversarial review: a rule scoped to the success model's never saw a bucket, so the element always took `success`
and a monitor budget was spent far past its limit)."""
from __future__ import annotations

import httpx
import pytest

from tests.adversarial.conftest import HostileStack

MSGS = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize("scoped", [False, True], ids=["unscoped rule (control)", "rule scoped to the model"])
async def test_budget_element_follows_its_rule(hostile: HostileStack, scoped: bool) -> None:
    account, base = hostile.new_gateway(credits_usd="50")
    spec = {"scope": {"model": {"equals": "openai/gpt-4o"}}} if scoped else {}
    hostile.rule(account, name="big-model", budget_usd="0.001", window="daily", action="monitor", **spec)
    with hostile.admin() as admin:
        r = admin.post(f"/accounts/{account}/gateways/g/routes", json={"name": "r", "graph": {
            "start": "check", "elements": [
                {"id": "check", "type": "budget", "rule": "big-model", "success": "big", "fallback": "small"},
                {"id": "big", "type": "model", "model": "openai/gpt-4o", "success": "done"},
                {"id": "small", "type": "model", "model": "openai/gpt-4o-mini", "success": "done"},
                {"id": "done", "type": "end"}]}})
        assert r.status_code == 201, r.text
    served = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(3):
            a = await client.post(f"{base}/compat/chat/completions",
                                  json={"model": "dynamic/r", "messages": MSGS, "max_tokens": 10})
            assert a.status_code == 200, a.text
            served.append(a.headers["cf-aig-model"])
    assert served[1:] == ["gpt-4o-mini", "gpt-4o-mini"], served
