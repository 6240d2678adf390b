"""Rate limits on the request path: what SpendLimits and ResponseCache need to count a request in the gateway's
`rate_limits` (gateway/limits/rate_rules.py).

A call that goes upstream is counted by SpendLimits, in the same reservation as its spend limits and credit hold:
1 in each matching rule counting requests, its token bound in each counting tokens; settled to 1, and to the tokens
it used (`actual_tokens`). A cache hit is counted by ResponseCache through the same reservation functions
(`HitCounter`): 1 in each rule counting requests, nothing in those counting tokens (no tokens were generated).
Every answer to a request that matched a rule carries the `x-ratelimit-*` headers of the tightest one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from gateway.errors import ErrorResponse, to_response
from gateway.exchange import Exchange
from gateway.limits.rate_rules import RateRule, rate_rules
from gateway.limits.rates import headers, rate_lines, refusal, tightest
from gateway.limits.reservations import Limits, Outcome
from gateway.limits.settlements import Settlements
from gateway.middleware.spend_plan import attributes_of


def rules_of(exchange: Exchange) -> tuple[RateRule, ...]:
    gateway = exchange.gateway
    if gateway is None or not gateway.settings.rate_limits:
        return ()
    return rate_rules(gateway.account_id, gateway.id, gateway.settings.rate_limits)


def actual_tokens(exchange: Exchange) -> int | None:
    """The tokens a call used, as the provider reported them (or as estimated for a client that left); 0 when it
    got no 2xx answer and no usage (nothing was generated); None when it was answered without usage (the reserved
    bound counts)."""
    usage = exchange.usage
    if usage.input_tokens is not None or usage.output_tokens is not None:
        return (usage.input_tokens or 0) + (usage.output_tokens or 0)
    status = exchange.status_code
    if status is None or not 200 <= status < 300:
        return 0
    return None


class HitCounter:
    """Counts cache hits in the rate limits counting requests: a reservation of 1 in each (nothing else), refused
    like any other when a bucket is full, settled once the hit is served."""

    def __init__(self, limits: Limits, settlements: Settlements, clock: Callable[[], datetime],
                 hold_ttl: timedelta = timedelta(minutes=15)) -> None:
        self.limits = limits
        self.settlements = settlements
        self.clock = clock
        self.hold_ttl = hold_ttl

    async def reserve(self, exchange: Exchange) -> Outcome | None:
        """The hit's reservation (None: no rule counting requests matched)."""
        rules = rules_of(exchange)
        if not rules:
            return None
        now = self.clock()
        lines = rate_lines(rules, attributes_of(exchange, exchange.target), now, units=("requests",))
        if not lines:
            return None
        return await self.limits.reserve(lines, 0, now=now, ttl=self.hold_ttl)

    async def refusal(self, outcome: Outcome) -> ErrorResponse:
        refused = await refusal(self.limits.db, outcome, self.clock())
        assert refused is not None  # only rate lines were reserved
        return to_response(refused)

    def headers(self, outcome: Outcome | None) -> list[tuple[bytes, bytes]]:
        return [] if outcome is None else headers(tightest(outcome, self.clock()), self.clock())

    async def settle(self, outcome: Outcome | None) -> None:
        if outcome is not None and outcome.ok:
            await asyncio.shield(self.settlements.settle(outcome.reservation_id, 0, self.clock(), tokens=0))
