"""A rule scoped to a model, or split by model, is not dodged by spelling the model another way that the provider
serves and the price catalogue prices as the same model (a dated snapshot, another case). Found by an adversarial
review: `equals: openai/gpt-4o` blocked `gpt-4o` but served `gpt-4o-2024-08-06` and `GPT-4o`."""

from __future__ import annotations

import httpx
import pytest

from gateway.limits.rules import bucket_keys, parse_rule
from gateway.middleware.spend_plan import attributes_of
from gateway.pricing import canonical_model, unit_prices
from tests.adversarial.conftest import HostileStack

SPELLINGS = ["gpt-4o", "GPT-4o", "Gpt-4O", "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"]


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_a_model_scoped_rule_catches_every_spelling(hostile: HostileStack, spelling: str) -> None:
    account, base = hostile.new_gateway(credits_usd="10", models=())  # catalogue prices
    hostile.rule(account, name="no-4o", budget_usd="0.0001", window="daily",
                 scope={"model": {"equals": "openai/GPT-4o-2024-08-06"}})  # the rule may spell it another way too
    assert unit_prices("openai", spelling) == unit_prices("openai", "gpt-4o")  # priced as gpt-4o
    body = {"model": spelling, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=30) as client:
        native = await client.post(f"{base}/openai/chat/completions", json=body)
        compat = await client.post(f"{base}/compat/chat/completions", json={**body, "model": f"openai/{spelling}"})
    assert native.status_code == 429 and compat.status_code == 429, (native.text, compat.text)


def test_a_split_by_model_counts_every_spelling_in_one_bucket() -> None:
    rule = parse_rule("7f1c4a52-2b0b-4c57-9a59-1b2f8e2d0c11", {
        "name": "per-model", "budget_usd": "1", "window": "daily", "scope": {"model": {"split": True}}})
    keys = set()
    for spelling in SPELLINGS:
        target = type("T", (), {"provider": "openai", "model": spelling})()
        exchange = type("E", (), {"metadata": {}})()
        keys.update(rule.bucket_keys(attributes_of(exchange, target)))  # type: ignore[arg-type]
    assert keys == {'{"model":"openai/gpt-4o"}'}
    # a model the catalogue prices on its own stays its own; an unknown one is compared in lower case
    assert canonical_model("openai", "gpt-4o-2024-05-13") == "gpt-4o-2024-05-13"
    assert canonical_model("custom-lab", "MyModel") == "mymodel"
    assert bucket_keys(rule.dimensions, {"model": "custom-lab/mymodel"}) == ['{"model":"custom-lab/mymodel"}']


async def test_gemini_v1alpha_is_a_call_the_gateway_understands(hostile: HostileStack) -> None:
    """Google serves generateContent under v1alpha too: it is read, limited and billed like v1beta (it passed on a
    client's key as an endpoint the gateway did not know, past rate limits)."""
    account, base = hostile.new_gateway(models=())
    with hostile.admin() as admin:
        r = admin.patch(f"/accounts/{account}/gateways/g", json={"rate_limits": [
            {"name": "one", "limit": 1, "interval_s": 3600, "unit": "requests"}]})
        assert r.status_code == 200, r.text
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 8}}
    statuses = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(3):
            answer = await client.post(f"{base}/google-ai-studio/v1alpha/models/gemini-2.5-flash:generateContent",
                                       json=body, headers={"x-goog-api-key": "client-own-key"})
            statuses.append(answer.status_code)
    assert statuses[1:] == [429, 429], statuses
