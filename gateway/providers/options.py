"""The router's request headers (`cf-aig-*`), validated before anything goes upstream (400 naming the header)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from gateway.errors import HeaderError
from gateway.pricing import CustomCost

BACKOFFS = ("constant", "linear", "exponential")
MAX_ATTEMPTS = 5
MAX_RETRY_DELAY_MS = 5000
MAX_TIMEOUT_MS = 30 * 60 * 1000
MAX_PRICE_PER_TOKEN = Decimal(1000)  # USD; far above any model, and keeps every cost inside nano-USD's range


@dataclass(frozen=True)
class RequestOptions:
    timeout_ms: int | None = None  # time to first byte, per attempt
    max_attempts: int = 1
    retry_delay_ms: int = 0
    backoff: str = "constant"
    byok_alias: str = "default"
    no_wholesale: bool = False
    custom_cost: CustomCost | None = None

    def delay_s(self, failed_attempts: int) -> float:
        """Pause before the next attempt, after `failed_attempts` (1, 2, ...) failures."""
        base = float(self.retry_delay_ms) / 1000
        if self.backoff == "linear":
            return base * failed_attempts
        if self.backoff == "exponential":
            return base * float(2 ** (failed_attempts - 1))
        return base


def _int(headers: dict[str, str], name: str, low: int, high: int) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise HeaderError(name, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise HeaderError(name, f"{name} must be between {low} and {high}")
    return value


def _bool(headers: dict[str, str], name: str) -> bool | None:
    raw = headers.get(name)
    if raw is None:
        return None
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise HeaderError(name, f"{name} must be true or false")
    return value == "true"


def parse_options(headers: dict[str, str]) -> RequestOptions:
    """headers: lower-cased names."""
    backoff = headers.get("cf-aig-backoff", "constant").strip().lower()
    if backoff not in BACKOFFS:
        raise HeaderError("cf-aig-backoff", f"cf-aig-backoff must be one of {', '.join(BACKOFFS)}")
    alias = headers.get("cf-aig-byok-alias", "default").strip()
    if not alias or len(alias) > 64:
        raise HeaderError("cf-aig-byok-alias", "cf-aig-byok-alias must be 1-64 characters")
    custom = None
    if "cf-aig-custom-cost" in headers:
        custom = parse_custom_cost(headers["cf-aig-custom-cost"])
    return RequestOptions(
        timeout_ms=_int(headers, "cf-aig-request-timeout", 1, MAX_TIMEOUT_MS),
        max_attempts=_int(headers, "cf-aig-max-attempts", 1, MAX_ATTEMPTS) or 1,
        retry_delay_ms=_int(headers, "cf-aig-retry-delay", 0, MAX_RETRY_DELAY_MS) or 0,
        backoff=backoff,
        byok_alias=alias,
        no_wholesale=bool(_bool(headers, "cf-aig-no-wholesale")),
        custom_cost=custom,
    )


def parse_custom_cost(raw: str) -> CustomCost:
    name = "cf-aig-custom-cost"
    try:
        data = json.loads(raw)
    except ValueError:
        raise HeaderError(name, f"{name} must be a JSON object") from None
    if not isinstance(data, dict) or set(data) - {"per_token_in", "per_token_out"} or not data:
        raise HeaderError(name, f'{name} must be {{"per_token_in": x, "per_token_out": y}}')
    values = {}
    for key in ("per_token_in", "per_token_out"):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise HeaderError(name, f"{name}.{key} must be a number")
        try:
            values[key] = Decimal(str(value))
        except InvalidOperation:
            raise HeaderError(name, f"{name}.{key} must be a number") from None
        if not values[key].is_finite() or not 0 <= values[key] <= MAX_PRICE_PER_TOKEN:
            raise HeaderError(name, f"{name}.{key} must be a number from 0 to {MAX_PRICE_PER_TOKEN} (USD per token)")
    return CustomCost(values["per_token_in"], values["per_token_out"])
