"""Admin endpoints: a gateway's price overrides, replaced as a whole (through
gateway.providers.store.PriceOverrides, the store the router reads them through)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from starlette.requests import Request

from gateway.admin.api import (
    AdminError,
    AdminRouter,
    AdminServices,
    Page,
    json_body,
    page_of,
    page_params,
    str_field,
)
from gateway.admin.gateways import TAG, ensure_gateway
from gateway.admin.provider_keys import provider_field
from gateway.errors import InvalidAmount
from gateway.money import parse_usd
from gateway.pricing import PRICE_FIELDS
from gateway.providers.store import Price

router = AdminRouter(TAG)

MAX_PRICES = 1000
PRICES_SCHEMA = {
    "type": "object", "required": ["prices"],
    "properties": {"prices": {"type": "array", "items": {
        "type": "object", "required": ["provider", "model", "input_per_mtok", "output_per_mtok"],
        "properties": {"provider": {"type": "string"}, "model": {"type": "string"},
                       **{f: {"type": "string", "description": "USD per 1,000 searches" if f.endswith("_per_k")
                              else "USD per million tokens"} for f in PRICE_FIELDS}}}}},
}


def _price(value: Any, field: str) -> Decimal | None:
    """USD per million tokens: a decimal string, zero up to money.MAX_USD, at most 9 decimal places (Postgres
    NUMERIC would take a thousand digits, and the cost of a request would then overflow nano-USD)."""
    if value is None:
        return None
    try:
        return parse_usd(value, field=field, allow_zero=True)
    except InvalidAmount as exc:
        raise AdminError(422, f"{exc} (USD per million tokens)", field) from None


def price_view(price: Price) -> dict[str, Any]:
    return {"provider": price.provider, "model": price.model,
            **{f: (None if v is None else format(v, "f")) for f, v in zip(PRICE_FIELDS, price.values, strict=True)}}


@router.route("GET", "/accounts/{account}/gateways/{gateway}/prices", "Per-model price overrides", paginated=True)
async def list_prices(request: Request, services: AdminServices, account: str, gateway: str) -> Page:
    await ensure_gateway(services, account, gateway)
    after, limit = page_params(request, "text", "text")
    found = await services.providers.prices.page(account, gateway, (after[0], after[1]) if after else None, limit + 1)
    return page_of(found, limit, lambda p: (p.provider, p.model), price_view)


@router.route("PUT", "/accounts/{account}/gateways/{gateway}/prices",
              "Replace the price overrides (USD per million tokens, web searches per 1,000; provider '*' matches any)",
              body=PRICES_SCHEMA)
async def put_prices(request: Request, services: AdminServices, account: str, gateway: str) -> Page:
    await ensure_gateway(services, account, gateway)
    data = await json_body(request)
    items = data.get("prices")
    if not isinstance(items, list) or len(items) > MAX_PRICES:
        raise AdminError(422, f"prices must be a list (at most {MAX_PRICES} entries)", "prices")
    prices: list[Price] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise AdminError(422, "each price must be an object", f"prices[{i}]")
        provider = item.get("provider")
        if provider != "*":
            provider = provider_field(item)
        model = str_field(item, "model", max_length=200)
        assert model is not None
        values = tuple(_price(item.get(f), f"prices[{i}].{f}") for f in PRICE_FIELDS)
        if values[0] is None or values[1] is None:
            raise AdminError(422, "input_per_mtok and output_per_mtok are required", f"prices[{i}]")
        if (provider, model) in seen:
            raise AdminError(422, f"a second price for {provider}/{model}", f"prices[{i}]")
        seen.add((provider, model))
        prices.append(Price(provider, model, values))
    store = services.providers.prices
    await store.replace(account, gateway, prices)
    return Page([price_view(p) for p in await store.page(account, gateway, None, MAX_PRICES)])  # all of them
