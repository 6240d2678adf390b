"""SpendLimits: reserve the worst case before the call, settle the actual cost after it, exactly once.

For every request with a known target (provider and model), the layer asks its `CostPlanner` for the plan
(billing mode, tenant, worst-case cost; see gateway/providers/estimate.py), checks identity policies (403), and in
one round trip reserves the estimate in every matching bucket and, on unified billing, as a credit hold. Then:

- all granted: call inward; `cf-aig-budget-remaining` goes on the response; the reservation is settled with the
  actual cost (from the Exchange), once: a whole JSON answer just before its body goes out (its cost is known by
  then, and the client's next call must find this one settled), anything else after the response body has fully
  passed — or the client went away, or the inner app raised — in a `finally`;
- a `block` rule would overflow: 429 "Spending limit exceeded" naming the rule and its bucket;
- only `fallback_model` rules would overflow: the planner re-targets the request to the fallback model
  (`exchange.step` + 1) and the layer reserves against the fallback's own rules, up to `MAX_FALLBACKS` steps;
- the account's own spending limit (unified billing, checked in the credit hold) would overflow: 429 "Account
  spending limit exceeded" naming its duration and strategy;
- the credit balance cannot cover it: 402, with what is available and what this request needed.

Rate limits (gateway/middleware/rate_limits.py) are lines of the same reservation: 1 request, or the request's token
bound, in each matching rule of the gateway's `rate_limits`, also for a model without a price (which spend rules
skip). One that overflows refuses the request (429 "Rate limit exceeded", before any spend rule's fallback); the
answer of a request that matched one carries the `x-ratelimit-*` headers of the tightest.

Both 429s carry `Retry-After` and the same amounts, as decimal USD strings: `spent_usd` (settled in the window),
`pending_usd` (what other requests in flight hold there), `reserved_usd` (this request's worst case, what it
needed), `limit_usd`, and `resets_at`: for a fixed window its end; for a rolling one the time enough of the spend
has left the window for this request to fit (rules: their slices; the account limit: its hourly slices; see
`Ledger.spending_limit_reset`), which ignores holds that may settle for less sooner.

The actual cost of a call that reached the provider but reported no usage (an upstream that died mid-stream)
is the full reservation: the provider may have billed us, so we never under-bill. A call that never produced a
2xx answer costs nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.db import unavailable
from gateway.errors import (
    AccountLimitExceeded,
    InsufficientCredit,
    LedgerReason,
    PolicyDenied,
    RequestRefused,
    RuleBudgetExceeded,
    to_response,
)
from gateway.exchange import Exchange
from gateway.ledger import Ledger
from gateway.limits import rates
from gateway.limits.buckets import room_at
from gateway.limits.plan import Plan
from gateway.limits.policies import allowed
from gateway.limits.reservations import BucketState, HoldRequest, Limits, Outcome, bucket_lines
from gateway.limits.rules import Rule
from gateway.limits.settlements import Settlements
from gateway.limits.store import LimitStore
from gateway.middleware.rate_limits import actual_tokens, rules_of
from gateway.middleware.spend_plan import CostPlanner
from gateway.money import from_nano, usd_str

log = logging.getLogger("spendgate.limits")

MAX_FALLBACKS = 3


class SpendLimits:
    """`settlements` tracks this instance's open reservations (gateway/limits/settlements.py: retried through a
    database outage, drained at shutdown); `hold_ttl` is how long a reservation lives before the sweeper may expire
    it; `fail_open` lets a BYOK request that only `monitor` rules match through while the database is unreachable
    (SPENDGATE_DB_UNAVAILABLE=fail_open_byok; blocking rules and unified billing always fail closed)."""

    def __init__(self, app: ASGIApp, *, limits: Limits, store: LimitStore, planner: CostPlanner,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 settlements: Settlements | None = None, hold_ttl: timedelta = timedelta(minutes=15),
                 fail_open: bool = False) -> None:
        self.app = app
        self.limits = limits
        self.store = store
        self.planner = planner
        self.clock = clock
        self.settlements = settlements or Settlements(limits, clock)
        self.hold_ttl = hold_ttl
        self.fail_open = fail_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange.of(scope)
        plan = await self.planner.plan(scope, receive, exchange)
        if plan is None or exchange.account_id is None or exchange.gateway_id is None:
            await self.app(scope, receive, send)
            return
        account, gateway = exchange.account_id, exchange.gateway_id
        groups = list(exchange.identity.groups) if exchange.identity else []
        if not allowed(await self.store.policies(account, gateway), groups, plan.model):
            answer = to_response(PolicyDenied(plan.model, tuple(groups)))
            exchange.error = answer.message
            await answer.render()(scope, receive, send)
            return

        outcome: Outcome | None = None
        for _ in range(MAX_FALLBACKS + 1):
            outcome = await self._reserve(exchange, plan)
            if outcome is None or outcome.ok or outcome.credit_refusal is not None:
                break
            fallback = self._fallback_of(outcome.exceeded)
            if fallback is None or not await self.planner.retarget(scope, exchange, fallback):
                break
            exchange.step += 1
            replanned = await self.planner.plan(scope, receive, exchange)
            if replanned is None:
                break
            plan = replanned
        if outcome is not None and not outcome.ok:
            await self._refuse(scope, receive, send, exchange, outcome, plan)
            return
        if outcome is None:
            await self.app(scope, receive, send)
            return

        remaining = outcome.remaining_after_nano()
        if remaining is not None:
            exchange.budget_remaining_usd = from_nano(max(remaining, 0))
        settled_plan = plan
        self.settlements.opened(outcome.reservation_id, lambda: self.planner.actual_nano(exchange, settled_plan))
        now = self.clock()
        rate_headers = rates.headers(rates.tightest(outcome, now), now)
        settled = False

        async def settle() -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            actual = self.planner.actual_nano(exchange, plan)
            if exchange.cost_usd is None and actual:
                # answered, but no price for what it used: charged its reservation, and the log says so (one number
                # in the log, the bucket and the ledger)
                exchange.cost_usd = from_nano(actual)
            # shielded: a call cancelled at the shutdown deadline still settles (Settlements.drain waits for it)
            await asyncio.shield(self.settlements.settle(outcome.reservation_id, actual, self.clock(),
                                                         tokens=actual_tokens(exchange)))

        try:
            await self.app(scope, receive,
                           _settling_whole_answers(self._with_budget_header(send, remaining, rate_headers), settle))
        finally:
            await settle()  # every other answer, and every call that ended without one (once: see `settled`)

    async def _reserve(self, exchange: Exchange, plan: Plan) -> Outcome | None:
        """None: nothing to reserve (no rule matched and no credit to hold, or the cost is unknown and no rate limit
        matched)."""
        assert exchange.account_id is not None and exchange.gateway_id is not None
        now = self.clock()
        lines = rates.rate_lines(rules_of(exchange), plan.attributes, now)
        hold = None
        if plan.estimate_nano is not None:  # unpriced: spend rules skip it (the router refuses it on unified billing)
            rules = await self.store.rules(exchange.account_id, exchange.gateway_id)
            lines = bucket_lines(rules, plan.attributes, now) + lines
            if plan.billing_mode == "unified":
                hold = HoldRequest(plan.tenant, plan.estimate_nano, exchange.request_id)
        if not lines and hold is None:
            return None
        try:
            outcome = await self.limits.reserve(lines, plan.estimate_nano or 0, hold=hold, now=now,
                                                ttl=self.hold_ttl, tokens=plan.tokens)
        except Exception as exc:
            if self.fail_open and hold is None and unavailable(exc) and all(
                    line.rule.action == "monitor" for line in lines):
                log.warning("database unavailable: BYOK request with monitor rules only let through unreserved")
                return None
            raise
        exchange.reservation = outcome
        return outcome

    @staticmethod
    def _fallback_of(exceeded: list[BucketState]) -> str | None:
        """Fall back only when every overflowing bucket's rule says so (and they agree on the model)."""
        models = {s.line.rule.fallback_model for s in exceeded}
        if not exceeded or any(s.line.rule.action != "fallback" for s in exceeded) or len(models) != 1:
            return None
        return models.pop()

    def _with_budget_header(self, send: Send, remaining: int | None, rate_headers: list[tuple[bytes, bytes]]) -> Send:
        if remaining is None and not rate_headers:
            return send

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start":
                if remaining is not None:
                    MutableHeaders(scope=message)["cf-aig-budget-remaining"] = usd_str(max(remaining, 0))
                if rate_headers:
                    message["headers"] = [*message.get("headers", []), *rate_headers]
            await send(message)

        return sender

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exchange: Exchange,
                      outcome: Outcome, plan: Plan) -> None:
        """Answer the refusal (gateway/errors.py maps it): what is spent, what other requests in flight hold, what
        this request needed (its worst case), the limit, and when it resets; or what the credit balance has."""
        answer = to_response(await self._refusal(outcome, plan))
        exchange.error = answer.message
        await answer.render()(scope, receive, send)

    async def _refusal(self, outcome: Outcome, plan: Plan) -> RequestRefused:
        now = self.clock()
        rate = await rates.refusal(self.limits.db, outcome, now)
        if rate is not None:
            return rate
        credit = outcome.credit_refusal
        reserved = outcome.estimate_nano
        if credit is not None and credit.reason == LedgerReason.SPENDING_LIMIT:
            assert credit.duration is not None and credit.strategy is not None
            spent, pending, limit = credit.spent_nano, credit.pending_nano, credit.limit_nano
            resets = await Ledger(self.limits.db).spending_limit_reset(
                plan.tenant, credit.duration, credit.strategy, spent + pending + reserved - limit, now=now)
            return AccountLimitExceeded(duration=credit.duration, strategy=credit.strategy, spent_nano=spent,
                                        pending_nano=pending, reserved_nano=reserved, limit_nano=limit,
                                        resets_at=resets, refused_at=now)
        if credit is not None:
            return InsufficientCredit(credit.reason, credit.available_nano, reserved)
        tightest = min(outcome.exceeded, key=lambda s: s.remaining_nano)
        rule = tightest.line.rule
        assert isinstance(rule, Rule)  # a rate limit's refusal is answered above
        resets = await room_at(self.limits.db, tightest, reserved, now)
        return RuleBudgetExceeded(
            rule=rule.raw.get("name", rule.name), rule_id=rule.id, bucket=_bucket_json(tightest.line.key),
            spent_nano=tightest.spent_nano, pending_nano=tightest.pending_nano, reserved_nano=reserved,
            limit_nano=rule.budget_nano, resets_at=resets, refused_at=now)


def _settling_whole_answers(send: Send, settle: Callable[[], Awaitable[None]]) -> Send:
    """Settle a whole answer before its body goes out, so that the client's next call finds this one settled (and
    is not refused for a reservation still pending near a limit). A whole answer is a 2xx that is not an event stream
    and comes in one body message: the router records its usage and cost before it sends it. Anything else (a
    stream, a JSON answer too large to hold, an error, a call that ends without an answer) settles when the call
    ends; `settle` runs once either way."""
    first_body: bool | None = None  # the next body message is the answer's first, of a 2xx that is not a stream

    async def sender(message: Message) -> None:
        nonlocal first_body
        if message["type"] == "http.response.start":
            first_body = 200 <= message["status"] < 300 and not _event_stream(message.get("headers", []))
        elif message["type"] == "http.response.body" and first_body:
            first_body = False
            if not message.get("more_body", False):
                await settle()
        await send(message)

    return sender


def _event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower() == b"content-type" and b"text/event-stream" in value.lower() for name, value in headers)


def _bucket_json(key: str) -> Any:
    return json.loads(key)

