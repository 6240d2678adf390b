"""The glue between SpendLimits and the provider router: the `CostPlanner` port SpendLimits asks for a request's
`Plan` (gateway/limits/plan.py), and `RouterPlanner`, which answers from the ProviderRouter's own target.

`plan` resolves the target exactly as the router will (`ProviderRouter.prepare`, kept on the request), then
bounds the cost (gateway/providers/estimate.py) with the model's unit prices: a price override of the gateway, the
request's `cf-aig-custom-cost`, or genai-prices (input at the dearer of the uncached and cache-write rates, the
top tier of tiered prices). A request the router would refuse (bad header, unknown gateway, no key…) gets no
plan: the router answers it with its own error, and nothing is reserved.

The output limit is the call's (gateway/providers/output_limit.py: one rule resolves every limit field, and the
same number is what the provider receives; `inject_max_tokens` writes the gateway's default into a call that set
none). An estimate past `MAX_ESTIMATE_NANO` is refused (400) rather than reserved: it could only come from
absurd prices and limits, and it keeps every sum of reservations far inside BIGINT.

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

from dataclasses import replace
from decimal import Decimal
from typing import Any, Protocol

from starlette.types import Receive, Scope

from gateway.errors import EstimateTooLarge, RequestRefused
from gateway.exchange import Call, Exchange
from gateway.limits.plan import Plan
from gateway.money import from_nano, to_nano
from gateway.pricing import canonical_model, unit_prices
from gateway.providers.router import ProviderRouter
from gateway.providers.target import Target


class CostPlanner(Protocol):
    async def plan(self, scope: Scope, receive: Receive, exchange: Exchange) -> Plan | None:
        """The plan, or None when this request is not a model call (the layer then passes it through)."""

    async def retarget(self, scope: Scope, exchange: Exchange, model: str) -> bool:
        """Point the request at another `provider/model`; False when this endpoint cannot serve it."""

    def actual_nano(self, exchange: Exchange, plan: Plan) -> int:
        """The actual cost after the call (0 when it never reached the provider)."""


def attributes_of(exchange: Exchange, target: Target | None = None) -> dict[str, Any]:
    """The request's value for every rule dimension: provider, model, metadata.<key>, cf.* identity keys."""
    attributes: dict[str, Any] = {}
    for key, value in exchange.metadata.items():
        attributes[key if key.startswith("cf.") else f"metadata.{key}"] = value
    if target is not None:
        attributes.update(model_attributes(target.provider, target.model))
    return attributes


def model_attributes(provider: str, model: str | None) -> dict[str, str]:
    """The `provider` and `model` dimensions of a call to `model` of `provider`: the model as the price catalogue
    identifies it (rules' `model` values are read the same way: gateway/limits/rules.py)."""
    return {"provider": provider, "model": f"{provider}/{canonical_model(provider, model or '')}"}


MAX_ESTIMATE_NANO = 1_000_000 * 1_000_000_000  # one million USD for one call


class RouterPlanner:
    def __init__(self, router: ProviderRouter) -> None:
        self.router = router

    async def plan(self, scope: Scope, receive: Receive, exchange: Exchange) -> Plan | None:
        try:
            target = await self.router.prepare(scope, receive)
        except RequestRefused:
            return None
        call = exchange.call
        if call is None or exchange.account_id is None:
            return None
        if call.endpoint is None:
            # an endpoint the gateway does not understand, on the client's own key (the gateway's keys refuse it):
            # nothing to price, but the gateway's rate limits counting requests and its identity policies apply to
            # it like to any call (its model: the body's, when it names one)
            named = call.body.get("model") if isinstance(call.body, dict) else None
            model = named if isinstance(named, str) else ""
            return Plan(target.provider, f"{target.provider}/{model}", target.billing_mode, exchange.account_id,
                        None, {**attributes_of(exchange), **model_attributes(target.provider, model)}, 0)
        if target.model is None:
            return None
        # each attempt the request allows that times out after sending is billed its input, and the last may answer
        inputs = call.input_bound * target.options.max_attempts
        estimate = self._estimate_nano(target, call, inputs)
        if estimate is not None and estimate > MAX_ESTIMATE_NANO:
            exchange.refusal = EstimateTooLarge(
                estimate, MAX_ESTIMATE_NANO, f"the worst-case cost of this request (${from_nano(estimate)}) is past "
                f"what the gateway accepts for one call (${from_nano(MAX_ESTIMATE_NANO)})")
            exchange.target = None
            return None
        return Plan(target.provider, f"{target.provider}/{target.model}", target.billing_mode, exchange.account_id,
                    estimate, attributes_of(exchange, target), inputs + call.output_bound)

    @staticmethod
    def _estimate_nano(target: Target, call: Call, inputs: int) -> int | None:
        """The worst case: `inputs` (the input bound once per attempt the request allows, `cf-aig-max-attempts`)
        at the dearest input rate, the output bound at the output rate (the audio rate when spoken output is asked
        for), the searches its tools may run, at the asked service tier."""
        custom = target.options.custom_cost
        if custom is not None:
            usd = inputs * custom.per_token_in + call.output_bound * custom.per_token_out
            return to_nano(usd, round_up=True)
        prices = unit_prices(target.provider, target.model, target.price, call.service_tier)
        if prices is None:
            return None
        output = prices.output
        if call.audio_output:
            output = max(output, prices.output_audio or output)
        if call.image_output:
            output = max(output, prices.output_image or output)
        worst: Decimal = (inputs * prices.input + call.output_bound * output
                          + call.web_searches * (prices.search or 0))
        return to_nano(worst, round_up=True)

    async def retarget(self, scope: Scope, exchange: Exchange, model: str) -> bool:
        """Parse the call again with another model (the one parser: nothing here edits a body by hand)."""
        current, where, body = exchange.target, exchange.where, exchange.json_body
        provider, _, name = model.partition("/")
        if current is None or where is None or not isinstance(body, dict) or not name:
            return False
        if provider != current.provider and current.passthrough:
            return False
        previous = (exchange.json_body, where, exchange.call, current)
        if current.compat:
            exchange.json_body = {**body, "model": model}
        elif provider != current.provider:
            return False
        elif provider == "google-ai-studio":
            verb = "streamGenerateContent" if current.stream else "generateContent"
            version = where.rest.split("/", 1)[0]
            exchange.where = replace(where, rest=f"{version}/models/{name}:{verb}")
        else:
            exchange.json_body = {**body, "model": name}
        exchange.target = exchange.call = None
        try:
            await self.router.prepare(scope, _no_receive)
        except RequestRefused:
            exchange.json_body, exchange.where, exchange.call, exchange.target = previous
            exchange.refusal = None
            return False
        return True

    def actual_nano(self, exchange: Exchange, plan: Plan) -> int:
        if exchange.cost_usd is not None and (exchange.usage_estimated or _succeeded(exchange)):
            return to_nano(exchange.cost_usd)  # reported, or estimated for a client that left (still billed)
        if not _succeeded(exchange):
            return 0
        return plan.estimate_nano or 0


def _succeeded(exchange: Exchange) -> bool:
    return exchange.status_code is not None and 200 <= exchange.status_code < 300


async def _no_receive() -> Any:  # the body is already kept on the Exchange
    return {"type": "http.disconnect"}
