"""Cost of a call in Decimal USD: operator overrides first, then genai-prices, else unknown (None).

- Usage is normalised before pricing: `input_tokens` counts every prompt token, cached ones included (OpenAI's
  `prompt_tokens` and Gemini's `promptTokenCount` already do; Anthropic's `input_tokens` excludes cache reads and
  writes, so its adapter adds them). genai-prices then prices cache reads and writes at their own rates, applies
  tiered prices (e.g. long-context tiers) and the price in force at the request's timestamp.
- An operator override (admin API: USD per million tokens, per gateway and model) wins over the catalogue:
  `input_per_mtok`, `output_per_mtok`, optional `cache_read_per_mtok` (default: the input price) and
  `cache_write_per_mtok` (default: the input price).
- `cf-aig-custom-cost` (when the gateway allows it): `{"per_token_in": x, "per_token_out": y}` USD per token.
- A model with no price anywhere: cost is None, never guessed as zero (SPEC §3 says what unified billing does).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import lru_cache

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
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cache_read_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal:
        cache_read = usage.cache_read_tokens or 0
        cache_write = usage.cache_write_tokens or 0
        uncached = max(0, (usage.input_tokens or 0) - cache_read - cache_write)
        total = (
            uncached * self.input_per_mtok
            + cache_read * (self.cache_read_per_mtok if self.cache_read_per_mtok is not None else self.input_per_mtok)
            + cache_write * (self.cache_write_per_mtok if self.cache_write_per_mtok is not None
                             else self.input_per_mtok)
            + (usage.output_tokens or 0) * self.output_per_mtok
        )
        return total / MILLION


@dataclass(frozen=True)
class CustomCost:
    per_token_in: Decimal
    per_token_out: Decimal

    def cost(self, usage: Usage) -> Decimal:
        return (usage.input_tokens or 0) * self.per_token_in + (usage.output_tokens or 0) * self.per_token_out


@dataclass(frozen=True)
class UnitPrices:
    """USD per token, for worst-case estimates before a call (input at the uncached rate)."""

    input: Decimal
    output: Decimal


def catalogue_cost(provider: str, model: str, usage: Usage, at: datetime | None = None) -> Decimal | None:
    from genai_prices import Usage as GenaiUsage
    from genai_prices import calc_price

    provider_id = GENAI_PROVIDER.get(provider)
    if provider_id is None:
        return None
    values = {
        "input_tokens": usage.input_tokens or 0,
        "output_tokens": usage.output_tokens or 0,
        "cache_read_tokens": usage.cache_read_tokens or 0,
        "cache_write_tokens": usage.cache_write_tokens or 0,
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = calc_price(GenaiUsage(**values), model_ref=model, provider_id=provider_id,
                                genai_request_timestamp=at)
    except LookupError:
        return None
    return Decimal(result.total_price)


@lru_cache(maxsize=4096)
def catalogue_unit_prices(provider: str, model: str) -> UnitPrices | None:
    """Per-token prices for estimates: the price of one million input, and of one million output tokens.

    Tiered prices: uses the tier of a large prompt (10M tokens), so the estimate is an upper bound. Input is
    priced at the dearer of the uncached and the cache-write rate (a prompt may be written to the cache)."""
    big = 10_000_000
    inp = catalogue_cost(provider, model, Usage(input_tokens=big, output_tokens=0))
    out = catalogue_cost(provider, model, Usage(input_tokens=big, output_tokens=big))
    written = catalogue_cost(provider, model, Usage(input_tokens=big, cache_write_tokens=big, output_tokens=0))
    if inp is None or out is None:
        return None
    return UnitPrices(max(inp, written or inp) / big, (out - inp) / big)


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


def unit_prices(provider: str, model: str | None, override: PriceOverride | None = None) -> UnitPrices | None:
    if override is not None:
        dearest_input = max(override.input_per_mtok, override.cache_write_per_mtok or override.input_per_mtok)
        return UnitPrices(dearest_input / MILLION, override.output_per_mtok / MILLION)
    if model is None:
        return None
    return catalogue_unit_prices(provider, model)
