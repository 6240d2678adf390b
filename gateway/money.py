"""Money: Decimal USD at the edges, integer nano-USD in the ledger and in limit counters.

Prices and costs are `Decimal` USD (genai-prices returns Decimal); the ledger and the spend-limit counters
store integer nano-USD (1e-9 USD) in BIGINT columns. The conversion happens here and nowhere else.
APIs and the CLI speak decimal strings ("12.50"), never floats.

Every amount an operator gives (a top-up, an auto top-up, a spending limit, a rule budget, a price) is at most
`MAX_USD`, one billion USD: 1e18 nano-USD, so one amount always fits a BIGINT (at most about 9.2e18 nano-USD,
9.2 billion USD) with room for a few more on top. Sums of amounts (a balance) can still outgrow a BIGINT; the
ledger refuses those in SQL and the admin API answers 422.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal, InvalidOperation

from gateway.errors import InvalidAmount

NANO_PER_USD = 1_000_000_000
_NANO = Decimal(NANO_PER_USD)
MAX_USD = Decimal(1_000_000_000)
BIGINT_MAX = 2**63 - 1  # Postgres BIGINT, where nano-USD amounts and balances are stored


def parse_usd(value: object, *, field: str = "amount_usd", allow_zero: bool = False,
              maximum: Decimal = MAX_USD) -> Decimal:
    """Parse a USD amount given as a decimal string (or int), at most `maximum`. Floats and bools are refused:
    money is exact."""
    if isinstance(value, bool) or isinstance(value, float) or value is None:
        raise InvalidAmount(field, f"{field} must be a decimal string such as \"12.50\"")
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise InvalidAmount(field, f"{field} must be a decimal string such as \"12.50\"") from None
    if not amount.is_finite():
        raise InvalidAmount(field, f"{field} must be finite")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise InvalidAmount(field, f"{field} must be {'zero or ' if allow_zero else ''}greater than zero")
    if amount > maximum:
        raise InvalidAmount(field, f"{field} must be at most {maximum:f} USD")
    if amount.as_tuple().exponent < -9:  # type: ignore[operator]
        raise InvalidAmount(field, f"{field} has more than 9 decimal places (the ledger counts nano-USD)")
    return amount


def to_nano(usd: Decimal, *, round_up: bool = False) -> int:
    """USD -> nano-USD. Costs round half-even; reservations (worst-case estimates) round up."""
    scaled = usd * _NANO
    return int(scaled.to_integral_value(rounding=ROUND_CEILING if round_up else ROUND_HALF_EVEN))


def from_nano(nano: int) -> Decimal:
    """nano-USD -> USD, exact."""
    return (Decimal(nano) / _NANO).normalize() if nano else Decimal("0")


def usd_str(nano: int) -> str:
    """nano-USD -> the API's decimal string: at least two decimals, no exponent, no trailing noise."""
    value = Decimal(nano) / _NANO
    text = format(value.quantize(Decimal("0.000000001")), "f").rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"
