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

from gateway.errors import BodyTooLarge, RequestRefused

if TYPE_CHECKING:
    from starlette.types import Receive, Scope

    from gateway.gateways import Gateway
    from gateway.providers.target import Target

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
    """What a provider reported for one call, whole (docs/cost-conformance.md). None = not reported.

    Totals include their parts, as the price catalogue expects: `input_tokens` counts every prompt token (cached,
    cache-written, audio and tool-use tokens included), `output_tokens` every generated one (reasoning and audio
    included); `cache_write_1h_tokens` is the part of `cache_write_tokens` written for an hour (the rest for five
    minutes). `web_searches` are server-side search requests billed per request; `service_tier` is the tier the
    provider says served the call (it picks the price)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    input_audio_tokens: int | None = None
    cache_audio_read_tokens: int | None = None
    output_audio_tokens: int | None = None
    output_image_tokens: int | None = None
    reasoning_tokens: int | None = None
    tool_prompt_tokens: int | None = None
    web_searches: int | None = None
    service_tier: str | None = None

    def details(self) -> dict[str, int | str]:
        """The components beyond the four token columns, for the log row (only those reported)."""
        out: dict[str, int | str] = {}
        for name in DETAIL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


DETAIL_FIELDS = ("cache_write_1h_tokens", "input_audio_tokens", "cache_audio_read_tokens", "output_audio_tokens",
                 "output_image_tokens", "reasoning_tokens", "tool_prompt_tokens", "web_searches", "service_tier")


@dataclass
class GuardrailOutcome:
    """What the guardrails found (gateway/middleware/guardrails.py): per side, each category found and the action
    applied to it; never the text that matched. `logged_request` is the request body as the log keeps it (every
    finding replaced), when anything was found in it."""

    prompt: dict[str, str] = field(default_factory=dict)
    response: dict[str, str] = field(default_factory=dict)
    logged_request: bytes | None = None

    def as_json(self) -> dict[str, dict[str, str]] | None:
        out = {side: found for side, found in (("prompt", self.prompt), ("response", self.response)) if found}
        return out or None


@dataclass(frozen=True)
class GatewayPath:
    """`/{account}/{gateway}/{provider}/{rest}` relative to the chain's mount point (gateway/paths.py).

    `error` says why the path cannot be served (dot segments, encoded delimiters, control characters...): the
    router answers 400 with it, and nothing is forwarded."""

    account: str
    gateway: str
    provider: str  # "openai", "anthropic", "google-ai-studio", "grok", "groq", "custom-{slug}" or "compat"
    rest: str  # the provider path after the provider segment, normalised, without a leading slash
    error: str | None = None


@dataclass(frozen=True)
class Endpoint:
    """A provider endpoint the gateway understands: it can bound its cost, so the gateway's keys may serve it."""

    name: str  # "chat/completions", "responses", "embeddings", "messages", "count_tokens", "generateContent", ...
    generates: bool  # produces output tokens (an output limit applies)
    free: bool = False  # the provider does not bill it (token counting)


@dataclass
class Call:
    """The canonical call: what the gateway understood of the request, built once by one parser
    (gateway/providers/call.py) before any rule, policy, estimate or key decision. Every later layer reads this,
    and the forwarder sends exactly this: the URL from `provider` + `path` + `query`, the body from `body`."""

    method: str
    provider: str  # the provider that serves it (for compat: the provider named in `model`)
    path: str  # the provider path, normalised (for compat: the upstream path the translation targets)
    query: str  # re-encoded from the parsed query
    endpoint: Endpoint | None  # None: not an endpoint the gateway understands (pass-through keys only)
    model: str | None
    stream: bool
    choices: int  # `n` / `candidateCount`
    output_limit: int | None  # per choice; the number reserved for (None: no output, e.g. embeddings)
    output_limit_given: bool  # the client set it (else the gateway's default was reserved)
    limit_field: str | None  # where the limit goes in the body ("max_tokens", "generationConfig.maxOutputTokens")
    body: Any  # the parsed JSON body (None when there was none)
    raw_body: bytes = b""  # the decoded body, forwarded as is only to unrecognised pass-through endpoints
    compat: bool = False
    input_bound: int = 0  # worst-case input tokens (gateway/providers/estimate.py)
    web_searches: int = 0  # billed searches its tools may run (reserved for)
    audio_output: bool = False  # it asks for spoken output (priced at the audio rate)
    image_output: bool = False  # it asks for images (Gemini responseModalities IMAGE: the image rate)
    searches_per_call: int = 0  # searches the model runs on every call without reporting them (search models)
    service_tier: str | None = None  # the tier it asks for (priority costs more: reserved at its price)
    referenced: str | None = None  # input the provider loads by reference, named (input_bound: the whole window)

    @property
    def output_bound(self) -> int:
        return (self.output_limit or 0) * self.choices


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
    where: GatewayPath | None = None  # the parsed request path (gateway/paths.py)
    call: Call | None = None  # the canonical call (gateway/providers/call.py)
    target: Target | None = None  # where the call goes and who pays (gateway/providers/target.py)
    # why the call was refused before anything went upstream (kept: the answer never changes)
    refusal: RequestRefused | None = None
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
    cached: bool = False  # served from the response cache (gateway/middleware/cache.py): nothing went upstream
    # the request body, read once
    body: bytes | None = None  # as received
    decoded_body: bytes | None = None  # its Content-Encoding undone
    json_body: Any = None  # parsed strictly (gateway/providers/call.py); None when there is none
    json_error: RequestRefused | None = None  # why the body is not JSON (refused where JSON is needed)
    input_bound: int = 0  # the body's worst-case input tokens (gateway/providers/estimate.py), from the one parse
    input_reference: str | None = None  # input it makes the provider load by reference, named (from that parse)
    # spend limits
    reservation: Any = None
    budget_remaining_usd: Decimal | None = None
    # what came back
    status_code: int | None = None
    usage: Usage = field(default_factory=Usage)
    usage_estimated: bool = False  # the provider sent no usage (the client left): estimated, see docs/refusals.md
    upstream_sent: bool = False  # the call was handed to the provider (it may bill us from here on)
    timed_out_attempts: int = 0  # attempts before the answer that had the prompt and timed out (each billed input)
    answer_finished: bool = False  # the stream's answer is complete (only its usage may still be to come)
    delivered_events: int = 0  # stream events with generated text relayed to the client
    delivered_text: int = 0  # bytes of generated text in them (for a client that leaves mid-stream)
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
    guardrails: GuardrailOutcome | None = None  # what the guardrails found and did
    body_too_large: bool = False
    # the request's headers by lower-cased name, the first of each, and the header list they were read from
    _header_index: tuple[Any, int, dict[bytes, bytes]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, scope: Scope) -> Exchange:
        state = scope.setdefault("state", {})
        exchange = state.get("exchange")
        if exchange is None:
            exchange = state["exchange"] = cls()
        return exchange  # type: ignore[no-any-return]

    def header(self, scope: Scope, name: bytes) -> bytes | None:
        """The request's first `name` header (`name` lower-case). The headers are indexed once per header list: a
        layer that passes inward a scope with other headers is read from its own list."""
        headers = scope["headers"]
        index = self._header_index
        if index is None or index[0] is not headers or index[1] != len(headers):
            first: dict[bytes, bytes] = {}
            for key, value in headers:
                first.setdefault(key.lower(), value)
            index = self._header_index = (headers, len(headers), first)
        return index[2].get(name)

    async def read_body(self, receive: Receive, limit: int) -> bytes:
        """Read the request body once (later callers get the kept copy). Raises BodyTooLarge past `limit`."""
        if self.body is not None:
            return self.body
        if self.body_too_large:
            raise BodyTooLarge(limit)
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
                # sticky: a second reader must not read on from where this one stopped and find a "body"
                self.body_too_large = True
                self.request_size = size
                raise BodyTooLarge(limit)
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
