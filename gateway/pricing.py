"""Cost of a call in Decimal USD: operator overrides first, then genai-prices, else unknown (None).

- Usage is normalised before pricing: `input_tokens` counts every prompt token, cached ones included (OpenAI's
  `prompt_tokens` and Gemini's `promptTokenCount` already do; Anthropic's `input_tokens` excludes cache reads and
  writes, so its adapter adds them). genai-prices then prices cache reads and writes at their own rates, applies
  tiered prices (e.g. long-context tiers) and the price in force at the request's timestamp.
- An operator override (admin API: USD per million tokens, per gateway and model) wins over the catalogue:
  `input_per_mtok`, `output_per_mtok`, optional `cache_read_per_mtok` (default: the input price) and
  `cache_write_per_mtok` (default: the input price).
- `cf-aig-custom-cost` (when the gateway allows it): `{"per_token_in": x, "per_token_out": y}` USD per token.
- A model with no price anywhere: cost is None, never guessed as zero (unified billing refuses such
  a model: gateway/providers/target.py).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from gateway.exchange import Usage

MILLION = Decimal(1_000_000)

# our provider names -> genai-prices provider ids
GENAI_PROVIDER = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google-ai-studio": "google",
    "grok": "x-ai",
    "groq": "groq",
}


@dataclass(frozen=True)
class PriceOverride:
    """An operator's prices for one model, USD per million tokens (web searches: per thousand). A component
    without its own price takes its parent's: cache reads and writes the input price, 1-hour writes the cache-write
    price, audio the text price. Web searches without a price are unpriced (the cost is unknown, never zero)."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    cache_write_1h_per_mtok: Decimal | None = None
    input_audio_per_mtok: Decimal | None = None
    output_audio_per_mtok: Decimal | None = None
    web_search_per_k: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal | None:
        read = usage.cache_read_tokens or 0
        write = usage.cache_write_tokens or 0
        write_1h = min(usage.cache_write_1h_tokens or 0, write)
        audio_in = usage.input_audio_tokens or 0
        audio_out = min(usage.output_audio_tokens or 0, usage.output_tokens or 0)
        uncached_text = max(0, (usage.input_tokens or 0) - read - write - audio_in)
        write_rate = _or(self.cache_write_per_mtok, self.input_per_mtok)
        total = (
            uncached_text * self.input_per_mtok
            + audio_in * _or(self.input_audio_per_mtok, self.input_per_mtok)
            + read * _or(self.cache_read_per_mtok, self.input_per_mtok)
            + (write - write_1h) * write_rate
            + write_1h * _or(self.cache_write_1h_per_mtok, write_rate)
            + ((usage.output_tokens or 0) - audio_out) * self.output_per_mtok
            + audio_out * _or(self.output_audio_per_mtok, self.output_per_mtok)
        ) / MILLION
        if usage.web_searches:
            if self.web_search_per_k is None:
                return None
            total += usage.web_searches * self.web_search_per_k / 1000
        return total

    def prices_searches(self) -> bool:
        return self.web_search_per_k is not None


PRICE_FIELDS = tuple(PriceOverride.__dataclass_fields__)  # the admin API's and the table's names


def _or(value: Decimal | None, default: Decimal) -> Decimal:
    return default if value is None else value


@dataclass(frozen=True)
class CustomCost:
    per_token_in: Decimal
    per_token_out: Decimal

    def cost(self, usage: Usage) -> Decimal:
        return (usage.input_tokens or 0) * self.per_token_in + (usage.output_tokens or 0) * self.per_token_out


@dataclass(frozen=True)
class UnitPrices:
    """USD per token (per search), for worst-case estimates before a call (input at the dearer of the uncached
    and cache-write rates). None: the component has no price for this model."""

    input: Decimal
    output: Decimal
    output_audio: Decimal | None = None
    search: Decimal | None = None
    output_image: Decimal | None = None


def genai_usage(usage: Usage) -> dict[str, int]:
    """The usage in the catalogue's terms: every total with its parts, each part clamped to its total (a provider
    that reports a part larger than its whole is priced on the whole)."""
    inp = usage.input_tokens or 0
    out = usage.output_tokens or 0
    write = min(usage.cache_write_tokens or 0, inp)
    values = {
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_tokens": min(usage.cache_read_tokens or 0, inp),
        "cache_write_tokens": write,
        "cache_write_1h_tokens": min(usage.cache_write_1h_tokens or 0, write),
        "input_audio_tokens": min(usage.input_audio_tokens or 0, inp),
        "output_audio_tokens": min(usage.output_audio_tokens or 0, out),
        "output_image_tokens": min(usage.output_image_tokens or 0, out),
        "output_reasoning_tokens": min(usage.reasoning_tokens or 0, out),
        "input_tool_tokens": min(usage.tool_prompt_tokens or 0, inp),
        "web_searches": usage.web_searches or 0,
    }
    if values["cache_read_tokens"] and values["input_audio_tokens"]:
        # cached audio: as reported, else the least overlap the totals allow (the dearest reading)
        least = max(0, values["cache_read_tokens"] + values["input_audio_tokens"] - inp)
        reported = usage.cache_audio_read_tokens
        values["cache_audio_read_tokens"] = least if reported is None else max(least, min(
            reported, values["cache_read_tokens"], values["input_audio_tokens"]))
    return {key: value for key, value in values.items() if value or key in ("input_tokens", "output_tokens")}


def price_context(provider: str, usage: Usage) -> dict[str, str] | None:
    """The catalogue's price variant for this call: OpenAI bills the tier its answer says served it."""
    if provider == "openai" and usage.service_tier:
        return {"service_tier": usage.service_tier}
    if provider == "anthropic" and usage.service_tier == "fast":
        return {"speed": "fast"}  # Anthropic's fast mode: its own prices
    return None


def catalogue_cost(provider: str, model: str, usage: Usage, at: datetime | None = None) -> Decimal | None:
    """The catalogue's price of `usage`, or None when the model is unknown or a component the call used has no
    price for it (audio on a model priced for text only, web searches): unpriced, never billed as text or zero."""
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    provider_id = GENAI_PROVIDER.get(provider)
    if provider_id is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = calc_price(GenaiUsage(**genai_usage(usage)), model_ref=model, provider_id=provider_id,
                                genai_request_timestamp=at, price_context=price_context(provider, usage))
    except (LookupError, ValueError):
        return None
    if _unpriced_component(result.model_price, usage):
        return None
    return Decimal(result.total_price)


def _unpriced_component(prices: object, usage: Usage) -> str | None:
    """A component the call used that the catalogue has no price for on this model."""
    if usage.input_audio_tokens and getattr(prices, "input_audio_mtok", None) is None:
        return "input audio"
    if usage.output_audio_tokens and getattr(prices, "output_audio_mtok", None) is None:
        return "output audio"
    if usage.output_image_tokens and getattr(prices, "output_image_mtok", None) is None:
        return "output images"
    if usage.web_searches and getattr(prices, "web_searches_kcount", None) is None:
        return "web searches"
    return None


@lru_cache(maxsize=4096)
def catalogue_unit_prices(provider: str, model: str, tier: str | None = None) -> UnitPrices | None:
    """Per-token prices for estimates: the price of ten million input, and of ten million output tokens.

    Tiered prices: uses the tier of a large prompt (10M tokens), so the estimate is an upper bound. Input is
    priced at the dearer of the uncached and the (1-hour) cache-write rate (a prompt may be written to the cache),
    at the service tier the request asks for."""
    big = 10_000_000
    inp = catalogue_cost(provider, model, Usage(input_tokens=big, output_tokens=0, service_tier=tier))
    out = catalogue_cost(provider, model, Usage(input_tokens=big, output_tokens=big, service_tier=tier))
    written = catalogue_cost(provider, model, Usage(input_tokens=big, cache_write_tokens=big, cache_write_1h_tokens=big,
                                                    output_tokens=0, service_tier=tier))
    if inp is None or out is None:
        return None
    spoken = catalogue_cost(provider, model, Usage(input_tokens=big, output_tokens=big, output_audio_tokens=big,
                                                   service_tier=tier))
    drawn = catalogue_cost(provider, model, Usage(input_tokens=big, output_tokens=big, output_image_tokens=big,
                                                  service_tier=tier))
    searches = catalogue_cost(provider, model, Usage(input_tokens=0, output_tokens=0, web_searches=1000))
    return UnitPrices(max(inp, written or inp) / big, (out - inp) / big,
                      None if spoken is None else (spoken - inp) / big, None if searches is None else searches / 1000,
                      None if drawn is None else (drawn - inp) / big)


# input tokens a call loading input by reference may use when the catalogue does not know the model's window: more
# than any model's window today
UNKNOWN_CONTEXT_WINDOW = 2_000_000


def _catalogue_model(provider: str, model: str | None) -> Any:
    """The catalogue's entry for the model (its id, its context window), or None when it does not know it."""
    from genai_prices.data_snapshot import get_snapshot

    provider_id = GENAI_PROVIDER.get(provider)
    if provider_id is None or not model:
        return None
    try:
        return get_snapshot().find_provider_model(model, None, provider_id, None)[1]
    except (LookupError, ValueError):
        return None


@lru_cache(maxsize=4096)
def context_window(provider: str, model: str | None) -> int:
    """The most input tokens the model takes (the catalogue's context window), or `UNKNOWN_CONTEXT_WINDOW`."""
    window = getattr(_catalogue_model(provider, model), "context_window", None)
    return window if isinstance(window, int) and window > 0 else UNKNOWN_CONTEXT_WINDOW


@lru_cache(maxsize=4096)
def canonical_model(provider: str, model: str) -> str:
    """The model as rules compare it: the catalogue's id for what the catalogue knows (a dated snapshot or another
    spelling it matches to the same model and price: `gpt-4o-2024-08-06`, `GPT-4o` -> `gpt-4o`), else the name in
    lower case. So a rule scoped to a model, or split by model, is not dodged by spelling the model another way."""
    found = getattr(_catalogue_model(provider, model), "id", None)
    return found.lower() if isinstance(found, str) and found else model.lower()


def canonical_model_ref(ref: str) -> str:
    """`provider/model` with the model canonical (`canonical_model`); anything else in lower case."""
    provider, slash, model = ref.partition("/")
    return f"{provider}/{canonical_model(provider, model)}" if slash and model else ref.lower()


def cost_of(
    provider: str, model: str | None, usage: Usage, *, at: datetime | None = None,
    override: PriceOverride | None = None, custom: CustomCost | None = None,
) -> Decimal | None:
    if usage.input_tokens is None and usage.output_tokens is None:
        return None
    if custom is not None:
        return custom.cost(usage)
    if override is not None:
        return override.cost(usage)
    if model is None:
        return None
    return catalogue_cost(provider, model, usage, at)


def unit_prices(provider: str, model: str | None, override: PriceOverride | None = None,
                tier: str | None = None) -> UnitPrices | None:
    if override is not None:
        write = override.cache_write_per_mtok or override.input_per_mtok
        dearest_input = max(override.input_per_mtok, write, override.cache_write_1h_per_mtok or write)
        spoken = override.output_audio_per_mtok or override.output_per_mtok
        search = None if override.web_search_per_k is None else override.web_search_per_k / 1000
        return UnitPrices(dearest_input / MILLION, override.output_per_mtok / MILLION, spoken / MILLION, search,
                          override.output_per_mtok / MILLION)
    if model is None:
        return None
    return catalogue_unit_prices(provider, model, tier if tier in ("priority", "fast") else None)


def unpriced_component(prices: UnitPrices, searches: int, audio_output: bool, image_output: bool = False
                       ) -> str | None:
    """What a call asks for that has no price: unified billing cannot charge for it (refused before the call)."""
    if searches and prices.search is None:
        return "web searches"
    if audio_output and prices.output_audio is None:
        return "audio output"
    if image_output and prices.output_image is None:
        return "image output"
    return None
