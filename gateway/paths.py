"""Where a request goes: `/{account}/{gateway}/{provider}/{rest}` relative to the chain's mount point.

`create_app` mounts the chain at `/v1`, so clients call `/v1/{account}/{gateway}/{provider}/{rest}` (and
`{prefix}/v1/...` when the whole app is mounted under a prefix). Every layer that needs the target calls
`locate(scope)`, which parses once and keeps the result on the Exchange.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette._utils import get_route_path
from starlette.types import Scope

from gateway.exchange import Exchange


@dataclass(frozen=True)
class GatewayPath:
    account: str
    gateway: str
    provider: str  # "openai", "anthropic", "google-ai-studio", "grok", "groq", "custom-{slug}" or "compat"
    rest: str  # the provider path after the provider segment, without a leading slash


def parse(route_path: str) -> GatewayPath | None:
    parts = route_path.lstrip("/").split("/", 3)
    if len(parts) < 3 or not all(parts[:3]):
        return None
    return GatewayPath(parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else "")


def locate(scope: Scope) -> GatewayPath | None:
    """Parse the request's target once per request and record it on the Exchange."""
    exchange = Exchange.of(scope)
    state = scope.setdefault("state", {})
    if "gateway_path" in state:
        return state["gateway_path"]  # type: ignore[no-any-return]
    target = parse(get_route_path(scope))
    state["gateway_path"] = target
    if target is not None:
        exchange.account_id, exchange.gateway_id = target.account, target.gateway
        exchange.provider, exchange.path = target.provider, target.rest
    return target
