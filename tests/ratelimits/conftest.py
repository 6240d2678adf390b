"""The spend tests' stack (a real gateway on loopback in front of the fake providers, a controllable clock), for the
rate limits: they run in the same reservations as the spend limits."""

from __future__ import annotations

import uuid
from typing import Any

from tests.spend.conftest import SpendStack, clock, spend_stack

__all__ = ["clock", "rate_rule_id", "spend_stack"]


def rate_rule_id(account: str, spec: dict[str, Any], gateway: str = "g") -> uuid.UUID:
    """The buckets' rule id of a rate limit of gateway `g` (as gateway/limits/rate_rules.py derives it)."""
    from gateway.limits.rate_rules import rate_rules, validate

    [rule] = rate_rules(account, gateway, validate([spec]))
    return uuid.UUID(rule.id)


def new_gateway(stack: SpendStack, *rules: dict[str, Any], **settings: Any) -> tuple[str, str]:
    """A fresh account with $100 of credits (unified billing) and gateway `g` with these rate limits."""
    return stack.new_gateway(credits_usd="100", rate_limits=list(rules), **settings)
