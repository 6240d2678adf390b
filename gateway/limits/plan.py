"""What the spend limits need to know about a request: its `Plan`, and the `CostPlanner` port that makes one.

The limits layer owns these types; the SpendLimits middleware (gateway/middleware/spend_limits.py) takes a
CostPlanner and reserves what its plans say, and gateway/limits/planner.py implements it on the provider router.
Neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from starlette.types import Receive, Scope

from gateway.exchange import Exchange


@dataclass
class Plan:
    """What the planner knows about a request before it is sent."""

    provider: str
    model: str  # provider/model
    billing_mode: str  # byok | unified
    tenant: str
    estimate_nano: int | None  # None: the model has no known price
    attributes: dict[str, Any] = field(default_factory=dict)  # dimension name -> value, for bucket keys


class CostPlanner(Protocol):
    async def plan(self, scope: Scope, receive: Receive, exchange: Exchange) -> Plan | None:
        """The plan, or None when this request is not a model call (the layer then passes it through)."""

    async def retarget(self, scope: Scope, exchange: Exchange, model: str) -> bool:
        """Point the request at another `provider/model`; False when this endpoint cannot serve it."""

    def actual_nano(self, exchange: Exchange, plan: Plan) -> int:
        """The actual cost after the call (0 when it never reached the provider)."""
