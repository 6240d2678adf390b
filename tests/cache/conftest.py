"""Two gateway instances (uvicorn on loopback, one database) in front of the fake providers, for the response cache.
Instance `a` runs the background workers (the cache sweeper every 0.2 s); `b` only serves. A local IdP signs the
JWTs of the identity-scoped tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from harness.cluster import Operator
from harness.fakes import FakeServer
from harness.fakes.providers import start_provider_fakes
from tests.eventually import eventually_sync
from tests.middleware.test_identity import AUD, IdP

ADMIN = "cache-tests-admin"
MODELS = ("gpt-4o-mini", "claude-haiku-4-5", "gemini-2.5-flash")
CHAT = "/openai/chat/completions"


@dataclass
class CacheStack:
    a: FakeServer
    b: FakeServer
    apps: dict[str, Any]
    idp: IdP

    @property
    def operator(self) -> Operator:
        return Operator(self.a.url, ADMIN)

    def admin(self) -> httpx.Client:
        return self.operator.admin()

    def recorder(self, provider: str) -> Any:
        return self.apps[provider].state.recorder

    def calls(self, provider: str = "openai") -> int:
        """Requests that reached the fake provider, errors included (every test starts from zero: see
        `clear_recorders`)."""
        return len(self.recorder(provider).seen)

    def new_gateway(self, *, credits_usd: str | None = None, **settings: Any) -> tuple[str, str]:
        """A fresh account with gateway `g` (models at $0.001 per output token, nothing per input token): the
        account and the gateway's base URL on instance `a`."""
        account = self.operator.new_account(credits_usd=credits_usd, models=MODELS, **settings)
        return account, f"{self.a.url}/v1/{account}/g"

    def add_gateway(self, account: str, gateway: str, **settings: Any) -> str:
        with self.admin() as admin:
            answer = admin.post(f"/accounts/{account}/gateways", json={"id": gateway, **settings})
            assert answer.status_code == 201, answer.text
            prices = [{"provider": "*", "model": m, "input_per_mtok": "0", "output_per_mtok": "1000"} for m in MODELS]
            assert admin.put(f"/accounts/{account}/gateways/{gateway}/prices",
                             json={"prices": prices}).status_code == 200
        return f"{self.a.url}/v1/{account}/{gateway}"

    def logs(self, account: str, count: int, gateway: str = "g") -> list[dict[str, Any]]:
        """The gateway's log rows, newest first, once `count` of them are written (the writer batches)."""
        def rows() -> list[dict[str, Any]]:
            with self.admin() as admin:
                return admin.get(f"/accounts/{account}/gateways/{gateway}/logs").json()[  # type: ignore[no-any-return]
                    "result"]

        return eventually_sync(rows, until=lambda r: len(r) >= count, what=f"{count} log rows")

    def settled(self) -> None:
        """Both instances hold no reservation (settlements commit just after the answer went out)."""
        def holds_open() -> float:
            total = 0.0
            for server in (self.a, self.b):
                text = httpx.get(server.url + "/metrics").text
                line = next(line for line in text.splitlines() if line.startswith("spendgate_holds_open "))
                total += float(line.split()[1])
            return total

        eventually_sync(holds_open, until=lambda n: n == 0, what="every settlement")


def chat(prompt: str = "tell me about caches", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "max_tokens": 30, **extra}


def raw(body: dict[str, Any], *, indent: int | None = None, reverse: bool = False) -> bytes:
    """The same JSON written differently: indented, keys in reverse order."""
    def reorder(value: Any) -> Any:
        if isinstance(value, dict):
            items = [(k, reorder(v)) for k, v in value.items()]
            return dict(reversed(items) if reverse else items)
        if isinstance(value, list):
            return [reorder(v) for v in value]
        return value

    return json.dumps(reorder(body), indent=indent).encode()


@pytest.fixture(scope="package")
def cache_stack(database_url: str) -> Iterator[CacheStack]:
    fakes = start_provider_fakes()
    idp = IdP()
    common: dict[str, Any] = dict(database_url=database_url, admin_token=ADMIN, providers=fakes.providers,
                                  jwt_issuer=idp.issuer, jwks_url=idp.issuer + "/cdn-cgi/access/certs",
                                  jwt_audience=(AUD,), db_pool_max=8)
    a = FakeServer(create_app(Settings(**common, sweep_interval_seconds=0.2), background=True), lifespan="on").start()
    b = FakeServer(create_app(Settings(**common), background=False), lifespan="on").start()
    try:
        yield CacheStack(a, b, fakes.apps, idp)
    finally:
        b.stop()
        a.stop()
        fakes.stop()
        idp.server.stop()


@pytest.fixture(autouse=True)
def clear_recorders(cache_stack: CacheStack) -> None:
    for app in cache_stack.apps.values():
        app.state.recorder.clear()


def unique() -> str:
    return uuid.uuid4().hex[:8]
