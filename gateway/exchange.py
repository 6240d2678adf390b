"""The per-request Exchange: what every layer of the chain reads and fills.

It lives in `scope["state"]["exchange"]`; the first layer that needs it calls `Exchange.of(scope)`, which
creates it on first use, so any middleware works alone in front of any ASGI app. No layer re-reads the body
from `receive`: the first one that needs it calls `read_body`, which keeps it here (413 past the limit).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from starlette.types import Receive, Scope

    from gateway.gateways import Gateway

BillingMode = Literal["byok", "unified"]


@dataclass
class Identity:
    """A verified caller (from an Access/OIDC JWT). A service token has `service_token` and no `user_id`."""

    user_id: str | None = None
    email: str | None = None
    groups: tuple[str, ...] = ()
    service_token: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "email": self.email,
            "groups": list(self.groups),
            "service_token": self.service_token,
        }


@dataclass
class Usage:
    """Tokens a provider reported for one call. None = not reported."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None


class BodyTooLarge(Exception):
    pass


@dataclass
class Exchange:
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.perf_counter)
    started_at: float = field(default_factory=time.time)
    # where the request goes
    account_id: str | None = None
    gateway_id: str | None = None
    gateway: Gateway | None = None
    provider: str | None = None
    model: str | None = None
    path: str | None = None
    # who asks, and what they say about themselves
    identity: Identity | None = None
    authenticated: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    # how it is paid and routed
    billing_mode: BillingMode | None = None
    zdr_requested: bool = False
    zdr_applied: bool = False
    zdr_reason: str | None = None
    step: int = 0
    # the request body, read once
    body: bytes | None = None
    json_body: Any = None
    # spend limits
    reservation: Any = None
    budget_remaining_usd: Decimal | None = None
    # what came back
    status_code: int | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: Decimal | None = None
    custom_cost: bool = False
    ttfb_ms: float | None = None
    request_size: int = 0
    response_size: int = 0
    error: str | None = None
    log_id: str | None = None
    collect_log: bool | None = None
    collect_payload: bool | None = None
    response_body: bytes | None = None

    @classmethod
    def of(cls, scope: Scope) -> Exchange:
        state = scope.setdefault("state", {})
        exchange = state.get("exchange")
        if exchange is None:
            exchange = state["exchange"] = cls()
        return exchange  # type: ignore[no-any-return]

    async def read_body(self, receive: Receive, limit: int) -> bytes:
        """Read the request body once (later callers get the kept copy). Raises BodyTooLarge past `limit`."""
        if self.body is not None:
            return self.body
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body exceeds {limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        self.body = b"".join(chunks)
        self.request_size = size
        return self.body

    def replay_receive(self, receive: Receive) -> Receive:
        """A `receive` for the inner app that yields the kept body first, then the real channel."""
        sent = False

        async def replay() -> Any:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": self.body or b"", "more_body": False}
            return await receive()

        return replay
