"""Where a request goes and who pays: the adapter, the upstream base URL, the key and the billing mode.

Keys, in this order: the client's own provider key (pass-through, `byok`); a key stored for the
gateway under `cf-aig-byok-alias` (default `default`, `byok`); the gateway's own key from `SPENDGATE_KEY_<P>`
(`unified`: credits are debited). Unified billing is refused (400) when the gateway is `byok_only`, the request
says `cf-aig-no-wholesale: true`, the provider has no gateway key, the provider is custom, or the model has no
known price (credits cannot be debited for an unknown cost). A BYOK request for an unpriced model passes with a
null cost, unless the gateway sets `block_unpriced`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from gateway.errors import (
    BillingRefused,
    InvalidRequest,
    OwnKeyRequired,
    UnknownCustomProvider,
    UnknownProvider,
    UnpricedModel,
)
from gateway.exchange import BillingMode, Call, Exchange
from gateway.gateways import Gateway
from gateway.pricing import PriceOverride, unit_prices, unpriced_component
from gateway.providers.anthropic import AnthropicFormat
from gateway.providers.base import Adapter, Native, Translator
from gateway.providers.call import QUERY_PARAMETERS
from gateway.providers.google import GoogleFormat
from gateway.providers.openai import OpenAIFormat
from gateway.providers.options import RequestOptions
from gateway.providers.store import ProviderConfigSnapshot
from gateway.settings import ProviderConfig, Settings

ADAPTERS: dict[str, Adapter] = {
    "openai": OpenAIFormat("openai"),
    "grok": OpenAIFormat("grok"),
    "groq": OpenAIFormat("groq"),
    "anthropic": AnthropicFormat(),
    "google-ai-studio": GoogleFormat(),
}


@dataclass
class Target:
    provider: str
    adapter: Adapter
    base_url: str
    path: str
    query: str
    key: str | None  # None: the client's own key header is forwarded as is
    billing_mode: BillingMode
    model: str | None
    stream: bool
    options: RequestOptions
    price: PriceOverride | None
    translator: Translator  # the client's API to the provider's and back (Native, or compat's)
    compat: bool = False
    passthrough: bool = False  # the client sent its own provider key
    content: bytes = b""  # the body forwarded upstream (native routes; compat translates the call's body)
    hide_usage_chunk: bool = False  # the gateway asked for stream usage the client did not ask for


def adapter_for(provider: str) -> Adapter:
    if provider in ADAPTERS:
        return ADAPTERS[provider]
    if provider.startswith("custom-"):
        return OpenAIFormat(provider)
    raise UnknownProvider(provider)


def base_url_for(provider: str, settings: Settings, config: ProviderConfigSnapshot, zdr: bool) -> str:
    if provider.startswith("custom-"):
        slug = provider.removeprefix("custom-")
        if slug not in config.custom:
            raise UnknownCustomProvider(slug)
        return config.custom[slug]
    pc: ProviderConfig = settings.providers[provider]
    if zdr and pc.zdr_upstream:
        return pc.zdr_upstream
    return pc.upstream


def resolve(
    *, exchange: Exchange, gateway: Gateway, settings: Settings, config: ProviderConfigSnapshot, call: Call,
    headers: dict[str, str], options: RequestOptions, client_key: str | None = None,
    translator: Callable[[Adapter], Translator] = Native,
) -> Target:
    """Where `call` goes and who pays. Raises a RequestRefused (BillingRefused, UnpricedModel, ...). `translator`:
    the compat endpoint's, for the provider's adapter (else the call's answers are the provider's own)."""
    provider, path, query, model, compat = call.provider, call.path, call.query, call.model, call.compat
    adapter = adapter_for(provider)
    base = base_url_for(provider, settings, config, False)
    price = config.price(provider, model)
    if not compat:
        client_key = adapter.client_key(headers, query)
    mode: BillingMode = "byok"
    key: str | None = None
    if client_key:
        key = client_key if compat else None
    elif (provider, options.byok_alias) in config.keys:
        key = config.keys[(provider, options.byok_alias)]
    elif options.byok_alias != "default":
        raise BillingRefused(provider, f"no {provider} key stored under alias {options.byok_alias!r} on this gateway")
    else:
        mode = "unified"
        if options.custom_cost is not None:
            raise BillingRefused(provider, "cf-aig-custom-cost is refused on unified billing: the gateway's own "
                                           "money is charged at its own prices")
        if gateway.settings.byok_only:
            raise BillingRefused(provider, "this gateway accepts only your own keys (byok_only): send a "
                                           f"{provider} key")
        if options.no_wholesale:
            raise BillingRefused(provider, f"cf-aig-no-wholesale is set and no {provider} key was sent or stored")
        if provider.startswith("custom-"):
            raise BillingRefused(provider, f"{provider} is not available on unified billing: send its key")
        pc = settings.providers[provider]
        key = pc.key
        if not key:
            raise BillingRefused(provider, f"{provider} is not available on unified billing here: send your own key")
        if exchange.zdr_requested:
            if pc.zdr_upstream:
                base, key = pc.zdr_upstream, pc.zdr_key or pc.key
                exchange.zdr_applied, exchange.zdr_reason = True, None
            else:
                exchange.zdr_applied = False
                exchange.zdr_reason = f"{provider} has no zero-data-retention configuration; standard one used"
    if not client_key:
        _check_gateway_key_call(call, options)
    if exchange.zdr_requested and mode == "byok":
        exchange.zdr_applied, exchange.zdr_reason = False, "zero data retention applies only to unified billing"
    prices = unit_prices(provider, model, price, call.service_tier)
    if mode == "unified" and prices is not None and call.endpoint is not None:
        missing = unpriced_component(prices, call.web_searches, call.audio_output, call.image_output)
        if missing:
            raise UnpricedModel(provider, model, f"model {model!r} of {provider} has no price for {missing}, so "
                                "unified billing cannot charge for it: add one with PUT "
                                "/admin/accounts/{a}/gateways/{g}/prices or use your own key")
    unpriced = price is None and options.custom_cost is None and prices is None
    if unpriced and (mode == "unified" or gateway.settings.block_unpriced):
        raise UnpricedModel(
            provider, model,
            f"model {model!r} of {provider} has no known price, so "
            + ("unified billing cannot charge for it" if mode == "unified" else "this gateway blocks it")
            + ": add a price with PUT /admin/accounts/{a}/gateways/{g}/prices or use your own key",
        )
    return Target(provider, adapter, base, path, query, key, mode, model, call.stream, options, price,
                  translator(adapter), compat, passthrough=bool(client_key))


def _check_gateway_key_call(call: Call, options: RequestOptions) -> None:
    """The gateway's keys (stored or its own) serve only what the gateway understands and can price."""
    if call.endpoint is None:
        raise OwnKeyRequired(call.provider, f"{call.method} /{call.path} is not an endpoint this gateway serves with "
                                            f"its {call.provider} keys (send your own key for it; see "
                                            "docs/refusals.md)")
    allowed = QUERY_PARAMETERS.get(call.provider, frozenset())
    for name, value in parse_qsl(call.query, keep_blank_values=True):
        if name not in allowed:
            raise InvalidRequest(f"query parameter {name!r} is not understood on {call.endpoint.name}")
        if name == "alt" and value not in ("sse", "json"):
            raise InvalidRequest("alt must be sse or json (the gateway reads usage from JSON)")
    body = call.body if isinstance(call.body, dict) else {}
    if body.get("background") is True:
        raise InvalidRequest("background responses are not served on the gateway's keys: their output is "
                             "generated after the call ends, where the gateway cannot bill it")
    if call.referenced is not None:
        # its size is unknown before the call, and on the gateway's keys it would read what is stored in the
        # gateway's own provider account (another tenant's responses, files, caches)
        raise BillingRefused(call.provider, f"the request loads input by reference ({call.referenced}), which the "
                                            "gateway does not serve on its keys: send the content in the request, or "
                                            "your own key")
    fee = fee_tool(body.get("tools"))
    if fee is not None:
        raise BillingRefused(call.provider, f"tool {fee!r} carries fees the gateway does not price: send your own key "
                                            "for it")


# server-side tools billed per use that the gateway cannot price (web search is priced: it is counted and reserved)
FEE_TOOLS = ("image_generation", "code_interpreter", "file_search", "x_search", "code_execution", "computer_use",
             "googleMaps", "google_maps", "enterpriseWebSearch", "enterprise_web_search")


def fee_tool(tools: Any) -> str | None:
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if isinstance(kind, str) and kind.startswith(FEE_TOOLS):
            return kind
        for key in tool:
            if isinstance(key, str) and key in FEE_TOOLS:
                return str(key)
    return None
