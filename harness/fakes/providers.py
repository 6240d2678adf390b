"""One fake server per built-in provider, and the gateway's provider configuration pointing at them (each with its
own gateway key `gw-key-<provider>`), for the test stacks that run a whole gateway in front of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.settings import PROVIDERS, ProviderConfig
from harness.fakes.anthropic import anthropic_app
from harness.fakes.gemini import gemini_app
from harness.fakes.openai import openai_app
from harness.fakes.server import FakeServer

# where each provider's paths start on its fake (the real base URLs end there too)
BASE_SUFFIX = {"openai": "/v1", "groq": "/openai/v1"}


@dataclass
class ProviderFakes:
    apps: dict[str, Any]
    servers: dict[str, FakeServer]
    providers: dict[str, ProviderConfig]

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


def start_provider_fakes() -> ProviderFakes:
    apps = {"openai": openai_app("/v1"), "groq": openai_app("/openai/v1"), "anthropic": anthropic_app(),
            "google-ai-studio": gemini_app(), "grok": openai_app("/v1")}
    servers = {name: FakeServer(app).start() for name, app in apps.items()}
    providers = {p: ProviderConfig(p, servers[p].url + BASE_SUFFIX.get(p, ""), key=f"gw-key-{p}")
                 for p in PROVIDERS if p in servers}
    return ProviderFakes(apps, servers, providers)
