"""A gateway with real traffic for the dashboard's browser tests: fake providers behind it, an IdP for identities,
requests on unified billing and on the client's own keys, with metadata, across two gateways, one refused by a
spend limit; then settled and logged before any page is opened."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from harness.cluster import USD_PER_TOKEN_OUT, Operator
from harness.fakes import FakeServer
from harness.fakes.providers import start_provider_fakes
from tests.eventually import eventually_sync
from tests.middleware.test_identity import AUD, IdP

ADMIN = "dashboard-browser-admin"
MODELS = ("gpt-4o-mini", "gpt-4o", "llama-3.3-70b-versatile", "claude-haiku-4-5")


@dataclass
class Seeded:
    url: str  # the gateway's origin
    account: str
    gateways: dict[str, int]  # gateway -> how many requests were logged on it
    operator: Operator

    def admin(self) -> httpx.Client:
        return self.operator.admin()

    def get(self, path: str, **params: Any) -> Any:
        with self.admin() as admin:
            answer = admin.get(path, params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()


def _usage(output: int, input: int = 12) -> dict[str, str]:
    return {"x-fake-usage": json.dumps({"input": input, "output": output})}


def _send(url: str, body: dict[str, Any], headers: dict[str, str], expect: int) -> None:
    answer = httpx.post(url, json=body, headers=headers, timeout=30)
    assert answer.status_code == expect, (url, answer.status_code, answer.text)


def _seed(stack_url: str, idp: IdP, operator: Operator) -> Seeded:
    account = operator.new_account(credits_usd="20", models=MODELS)
    with operator.admin() as admin:
        assert admin.post(f"/accounts/{account}/gateways", json={"id": "research"}).status_code == 201
        prices = [{"provider": "*", "model": m, "input_per_mtok": "0", "output_per_mtok": USD_PER_TOKEN_OUT}
                  for m in MODELS]
        assert admin.put(f"/accounts/{account}/gateways/research/prices", json={"prices": prices}).status_code == 200
        assert admin.put(f"/accounts/{account}/credits/auto-topup",
                         json={"threshold_usd": "5.00", "amount_usd": "25.00"}).status_code == 200
    operator.rule(account, name="per-user-daily", budget_usd="5.00", window="daily",
                  scope={"cf.user_id": {"split": True}}, alert_at=[0.5, 0.9])
    operator.rule(account, name="interns", budget_usd="0.15", window="daily",
                  scope={"cf.user.groups": {"equals": "interns"}})
    operator.rule(account, name="team-monthly", budget_usd="40.00", window="monthly", window_type="rolling",
                  scope={"metadata.team": {"split": True}}, action="monitor")

    base = f"{stack_url}/v1/{account}"
    alice = idp.token(sub="alice", email="alice@example.com", groups=["eng"])
    bob = idp.token(sub="bob", email="bob@example.com", groups=["finance"])
    carol = idp.token(sub="carol", email="carol@example.com", groups=["interns"])
    ci = idp.token(sub="", email=None, groups=[], common_name="ci-runner")

    def who(token: str, **metadata: Any) -> dict[str, str]:
        return {"cf-access-jwt-assertion": token, "cf-aig-metadata": json.dumps(metadata)}

    def chat(model: str = "gpt-4o-mini", max_tokens: int = 100) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": "How much did we spend?"}],
                "max_tokens": max_tokens}

    # alice, on unified billing (the gateway's keys, paid from credits), through the OpenAI SDK
    client = openai.OpenAI(base_url=f"{base}/g/openai", api_key="unused", max_retries=0)
    for output in (100, 250, 40):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}],
                                       max_tokens=output,
                                       extra_headers={**_usage(output), **who(alice, team="search", feature="chat"),
                                                      "Authorization": ""})
    _send(f"{base}/g/compat/chat/completions", chat("groq/llama-3.3-70b-versatile", 50),
          {**_usage(50), **who(alice, team="search")}, 200)
    # bob, on his own Anthropic key (BYOK)
    for output in (200, 120):
        _send(f"{base}/g/anthropic/v1/messages",
              {"model": "claude-haiku-4-5", "max_tokens": output, "messages": [{"role": "user", "content": "hi"}]},
              {**_usage(output), **who(bob, team="billing"), "x-api-key": "sk-ant-bob",
               "anthropic-version": "2023-06-01"}, 200)
    # a CI job with an Access service token, unified billing
    _send(f"{base}/g/openai/chat/completions", chat(max_tokens=30), {**_usage(30), **who(ci, team="platform")}, 200)
    # carol is an intern: the second request passes the interns' $0.15 a day, and is refused (429)
    _send(f"{base}/g/openai/chat/completions", chat(max_tokens=100), {**_usage(100), **who(carol, team="search")}, 200)
    _send(f"{base}/g/openai/chat/completions", chat(max_tokens=100), {**_usage(100), **who(carol, team="search")}, 429)
    # the research gateway: alice on gpt-4o, BYOK pass-through
    _send(f"{base}/research/openai/chat/completions", chat("gpt-4o", 300),
          {**_usage(300), **who(alice, team="research"), "Authorization": "Bearer sk-alice-own"}, 200)

    # the checks gateway: a response cache, a guardrail that redacts e-mail addresses in prompts, and a rate limit of
    # two requests a minute. The first call is redacted and stored, the same call again is a cache hit (it counts as
    # a request), the third is refused by the rate limit
    with operator.admin() as admin:
        assert admin.post(f"/accounts/{account}/gateways", json={
            "id": "checks", "cache_ttl": 600, "guardrails": {"prompt": {"pii.email": "redact"}},
            "rate_limits": [{"name": "two-a-minute", "limit": 2, "interval_s": 60}]}).status_code == 201
    mail = {"model": "gpt-4o-mini", "max_tokens": 20,
            "messages": [{"role": "user", "content": "Write to ann.lee@example.com about the invoice"}]}
    own = {**_usage(20), **who(bob, team="billing"), "Authorization": "Bearer sk-bob-own"}
    _send(f"{base}/checks/openai/chat/completions", mail, own, 200)
    _send(f"{base}/checks/openai/chat/completions", mail, own, 200)
    _send(f"{base}/checks/openai/chat/completions", {**mail, "max_tokens": 21}, own, 429)

    seeded = Seeded(stack_url, account, {"g": 9, "research": 1, "checks": 3}, operator)
    for gateway, expected in seeded.gateways.items():
        eventually_sync(lambda g=gateway: seeded.get(f"/accounts/{account}/gateways/{g}/logs")["result"],
                        until=lambda rows, n=expected: len(rows) == n, what=f"the logs of gateway {gateway}")

    def holds_open() -> float:
        text = httpx.get(stack_url + "/metrics").text
        line = next(line for line in text.splitlines() if line.startswith("spendgate_holds_open "))
        return float(line.split()[1])

    eventually_sync(holds_open, until=lambda n: n == 0, what="every settlement")
    return seeded


@pytest.fixture(scope="package")
def seeded(database_url: str) -> Iterator[Seeded]:
    fakes = start_provider_fakes()
    idp = IdP()
    settings = Settings(database_url=database_url, admin_token=ADMIN, providers=fakes.providers,
                        jwt_issuer=idp.issuer, jwks_url=idp.issuer + "/cdn-cgi/access/certs", jwt_audience=(AUD,),
                        db_pool_max=10)
    gateway = FakeServer(create_app(settings, background=True), lifespan="on").start()
    try:
        yield _seed(gateway.url, idp, Operator(gateway.url, ADMIN))
    finally:
        gateway.stop()
        fakes.stop()
        idp.server.stop()
