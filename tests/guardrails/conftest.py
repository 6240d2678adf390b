"""A real gateway (uvicorn on loopback) in front of the fake providers, and gateways with guardrails set through
the admin API."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import Settings
from harness.fakes import FakeServer
from harness.fakes.providers import ProviderFakes, start_provider_fakes

ADMIN = "guardrails-tests-admin"


@dataclass
class Stack:
    gateway: FakeServer
    fakes: ProviderFakes

    def recorder(self, provider: str) -> Any:
        return self.fakes.apps[provider].state.recorder

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway.url + "/admin", headers={"Authorization": f"Bearer {ADMIN}"})

    def base(self, account: str, gateway: str = "g") -> str:
        return f"{self.gateway.url}/v1/{account}/{gateway}"

    def guarded(self, guardrails: dict[str, Any] | None, **settings: Any) -> str:
        """A new account with a gateway `g` whose guardrails are these; returns the account."""
        account = f"gr-{uuid.uuid4().hex[:10]}"
        with self.admin() as admin:
            assert admin.post("/accounts", json={"id": account}).status_code == 201
            created = admin.post(f"/accounts/{account}/gateways",
                                 json={"id": "g", "guardrails": guardrails, **settings})
            assert created.status_code == 201, created.text
        return account

    def logs(self, account: str, **query: Any) -> list[dict[str, Any]]:
        with self.admin() as admin:
            answer = admin.get(f"/accounts/{account}/gateways/g/logs", params=query)
            assert answer.status_code == 200, answer.text
            return answer.json()["result"]  # type: ignore[no-any-return]


@pytest.fixture(scope="package")
def stack(database_url: str) -> Iterator[Stack]:
    fakes = start_provider_fakes()
    settings = Settings(database_url=database_url, admin_token=ADMIN, providers=fakes.providers, db_pool_max=8)
    gateway = FakeServer(create_app(settings, background=False), lifespan="on").start()
    try:
        yield Stack(gateway, fakes)
    finally:
        gateway.stop()
        fakes.stop()
