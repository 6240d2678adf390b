"""What the spend limits need to know about a request: its `Plan`.

The limits layer owns this type: it is the whole of what a reservation needs from a request. The request path
makes it (gateway/middleware/spend_plan.py, from the provider router's target) and the SpendLimits middleware
reserves what it says; the limits package imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Plan:
    """What the planner knows about a request before it is sent."""

    provider: str
    model: str  # provider/model
    billing_mode: str  # byok | unified
    tenant: str
    estimate_nano: int | None  # None: the model has no known price
    attributes: dict[str, Any] = field(default_factory=dict)  # dimension name -> value, for bucket keys
    tokens: int = 0  # the token bound (input bound + output limit), reserved by rate limits counting tokens
