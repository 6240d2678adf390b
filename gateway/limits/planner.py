"""RouterPlanner: what SpendLimits needs to know about a request, from the ProviderRouter's own target.

`plan` resolves the target exactly as the router will (`ProviderRouter.prepare`, kept on the request), then
bounds the cost (gateway/limits/estimate.py) with the model's unit prices: a price override of the gateway, the
request's `cf-aig-custom-cost`, or genai-prices (input at the dearer of the uncached and cache-write rates, the
top tier of tiered prices). A request the router would refuse (bad header, unknown gateway, no key…) gets no
plan: the router answers it with its own error, and nothing is reserved.

`inject_max_tokens` (gateway setting): a request without an output limit gets the gateway's
`default_max_output_tokens` written into its body (the field its API uses), so that it cannot cost more than it
reserved.

`retarget` moves the request to a fallback model. Decided where the spec is silent:
- on the compat endpoint, any provider: the body's `model` changes and the target is resolved again (the key
  and billing mode of the new provider apply);
- on a native route, only a model of the same provider (the wire format, and so the client's SDK, stay the same);
- never to another provider when the client sent its own provider key (pass-through): the key belongs to the
  first provider and is not sent anywhere else. The rule then blocks (429) instead.

`actual_nano` is the cost to settle: the call's cost when the provider reported usage; the full reservation
when the call was answered 2xx but no usage came back (a stream that died, an exception) — the provider may have
billed us, so we never under-bill; nothing when no 2xx answer came back.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from starlette.types import Receive, Scope

from gateway.exchange import Exchange
from gateway.limits.estimate import token_bound
from gateway.middleware.spend_limits import Plan
from gateway.money import to_nano
from gateway.paths import GatewayPath, locate
from gateway.pricing import unit_prices
from gateway.providers.router import ProviderRouter, RequestRefused
from gateway.providers.target import Target


def attributes_of(exchange: Exchange, target: Target | None = None) -> dict[str, Any]:
    """The request's value for every rule dimension: provider, model, metadata.<key>, cf.* identity keys."""
    attributes: dict[str, Any] = {}
    for key, value in exchange.metadata.items():
        attributes[key if key.startswith("cf.") else f"metadata.{key}"] = value
    if target is not None:
        attributes["provider"] = target.provider
        attributes["model"] = f"{target.provider}/{target.model}"
    return attributes


def _limit_field(target: Target) -> str | None:
    if target.provider == "google-ai-studio" and not target.compat:
        return "generationConfig.maxOutputTokens"
    if target.path.rstrip("/").endswith("responses"):
        return "max_output_tokens"
    if target.path.rstrip("/").endswith("embeddings"):
        return None
    if target.provider == "openai" and not target.compat:
        return "max_completion_tokens"
    return "max_tokens"


class RouterPlanner:
    def __init__(self, router: ProviderRouter) -> None:
        self.router = router

    async def plan(self, scope: Scope, receive: Receive, exchange: Exchange) -> Plan | None:
        try:
            target = await self.router.prepare(scope, receive)
        except RequestRefused:
            return None
        if target.model is None or exchange.gateway is None or exchange.account_id is None:
            return None
        settings = exchange.gateway.settings
        embeddings = target.path.rstrip("/").endswith("embeddings")
        bound = token_bound(exchange.json_body, settings.default_max_output_tokens, embeddings=embeddings)
        if settings.inject_max_tokens and not bound.output_limit_given and not embeddings:
            self._inject_limit(exchange, target, settings.default_max_output_tokens)
        estimate = self._estimate_nano(target, bound.input_tokens, bound.output_tokens)
        return Plan(target.provider, f"{target.provider}/{target.model}", target.billing_mode, exchange.account_id,
                    estimate, attributes_of(exchange, target))

    @staticmethod
    def _estimate_nano(target: Target, input_tokens: int, output_tokens: int) -> int | None:
        custom = target.options.custom_cost
        if custom is not None:
            usd = input_tokens * custom.per_token_in + output_tokens * custom.per_token_out
            return to_nano(usd, round_up=True)
        prices = unit_prices(target.provider, target.model, target.price)
        if prices is None:
            return None
        worst: Decimal = input_tokens * prices.input + output_tokens * prices.output
        return to_nano(worst, round_up=True)

    @staticmethod
    def _inject_limit(exchange: Exchange, target: Target, limit: int) -> None:
        body = exchange.json_body
        field = _limit_field(target)
        if not isinstance(body, dict) or field is None:
            return
        if "." in field:
            outer, inner = field.split(".")
            config: dict[str, Any] = body[outer] if isinstance(body.get(outer), dict) else {}
            body = {**body, outer: {**config, inner: limit}}
        else:
            body = {**body, field: limit}
        exchange.json_body = body
        exchange.body = json.dumps(body).encode()

    async def retarget(self, scope: Scope, exchange: Exchange, model: str) -> bool:
        state = scope.setdefault("state", {})
        current: Target | None = state.get("target")
        where = locate(scope)
        body = exchange.json_body
        provider, _, name = model.partition("/")
        previous = (exchange.json_body, exchange.body, state.get("gateway_path"))
        if current is None or where is None or not isinstance(body, dict) or not name:
            return False
        if provider != current.provider and current.passthrough:
            return False
        if current.compat:
            body = {**body, "model": model}
        elif provider != current.provider:
            return False
        elif provider == "google-ai-studio":
            verb = "streamGenerateContent" if current.stream else "generateContent"
            rest = where.rest.split("models/")[0] + f"models/{name}:{verb}"
            state["gateway_path"] = GatewayPath(where.account, where.gateway, where.provider, rest)
        else:
            body = {**body, "model": name}
        exchange.json_body, exchange.body = body, json.dumps(body).encode()
        state["target"] = None
        try:
            await self.router.prepare(scope, _no_receive)
        except RequestRefused:
            exchange.json_body, exchange.body, state["gateway_path"] = previous
            state["target"] = current
            return False
        return True

    def actual_nano(self, exchange: Exchange, plan: Plan) -> int:
        if exchange.status_code is None or not 200 <= exchange.status_code < 300:
            return 0
        if exchange.cost_usd is not None:
            return to_nano(exchange.cost_usd)
        return plan.estimate_nano or 0


async def _no_receive() -> Any:  # the body is already kept on the Exchange
    return {"type": "http.disconnect"}
