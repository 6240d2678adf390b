"""A real gateway (uvicorn on loopback) in front of fake providers (uvicorn on loopback)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import PROVIDERS, ProviderConfig, Settings
from harness.fakes import FakeServer, anthropic_app, gemini_app, openai_app

ADMIN = "provider-tests-admin"


@dataclass
class Stack:
    gateway: FakeServer
    fakes: dict[str, FakeServer]
    apps: dict[str, Any]

    def recorder(self, provider: str) -> Any:
        return self.apps[provider].state.recorder

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.gateway.url + "/admin", headers={"Authorization": f"Bearer {ADMIN}"})

    def base(self, account: str, gateway: str = "default") -> str:
        return f"{self.gateway.url}/v1/{account}/{gateway}"

    def new_account(self, credits_usd: str | None = None) -> str:
        name = f"p-{uuid.uuid4().hex[:10]}"
        with self.admin() as admin:
            assert admin.post("/accounts", json={"id": name}).status_code == 201
            if credits_usd:
                admin.post(f"/accounts/{name}/credits/topups", json={"amount_usd": credits_usd,
                                                                      "idempotency_key": "seed"})
        return name


@pytest.fixture(scope="package")  # stopped when tests/providers is done: its pool goes back to the server
def stack(database_url: str) -> Iterator[Stack]:
    apps = {
        "openai": openai_app("/v1"), "grok": openai_app("/v1"), "groq": openai_app("/openai/v1"),
        "anthropic": anthropic_app(), "google-ai-studio": gemini_app(), "custom": openai_app("/v1"),
    }
    fakes = {name: FakeServer(app).start() for name, app in apps.items()}
    suffix = {"openai": "/v1", "groq": "/openai/v1"}
    providers = {
        p: ProviderConfig(p, fakes[p].url + suffix.get(p, ""), key=f"gw-key-{p}") for p in PROVIDERS
    }
    settings = Settings(database_url=database_url, admin_token=ADMIN, providers=providers, db_pool_max=10)
    gateway = FakeServer(create_app(settings, background=False), lifespan="on").start()
    try:
        yield Stack(gateway, fakes, apps)
    finally:
        gateway.stop()
        for fake in fakes.values():
            fake.stop()
