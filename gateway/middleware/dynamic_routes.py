"""DynamicRoutes: `model: "dynamic/{name}"` on the compat endpoint runs the route's deployed graph.

The walk (gateway/routes/graph.py) decides which model to try; each `model` element is one pass through the
rest of the chain (SpendLimits, then the router) with the body's `model` set to the element's model and, when the
element says so, `cf-aig-request-timeout` / `cf-aig-max-attempts` set from its `timeout_ms` / `retries`. So every
attempt reserves against its own model's rules and settles on its own.

An attempt fails when its answer starts with 429 (a spend limit, or the provider's rate limit) or a 5xx (the
router's 502/504 included) — at that moment no byte has reached the client. If the element has a `fallback`, the
failed answer is held back and the walk goes on; otherwise it is what the client gets. A walk that ends without
any model answering replays the last held-back failure (with the route headers of the element that failed last;
the spec is silent, but the client should see which route and element answered), or answers 502 when no model was
tried at all.

`budget` elements check the named spend-limit rule's buckets for this request (its metadata and identity, with
each model the `success` branch may call, so a rule scoped to or split by a model or provider is read where that
branch would spend): `success` while every one has budget left, else `fallback`. A budget element naming a rule
that does not exist, or one that applies to none of those models, takes `success` (no limit applies).

Headers on the answer: `cf-aig-route` (name), `cf-aig-route-version`, `cf-aig-route-element` (the model element
that served), and the router's `cf-aig-step` (0 = the first model tried, n = the nth fallback), `cf-aig-model`,
`cf-aig-provider`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import RequestRefused, RouteServedNothing, UnknownDynamicRoute, to_response
from gateway.exchange import Exchange, Usage
from gateway.limits.buckets import bucket_remaining
from gateway.limits.store import LimitStore
from gateway.middleware.spend_plan import attributes_of, model_attributes
from gateway.paths import locate
from gateway.providers.call import read_json
from gateway.providers.options import MAX_ATTEMPTS
from gateway.routes.graph import ModelStep, walk
from gateway.routes.store import RouteStore

PREFIX = "dynamic/"


def _failed(status: int) -> bool:
    return status == 429 or status >= 500


class _Attempt:
    """Wraps `send` for one model attempt: holds back a failed answer when there is somewhere else to go."""

    def __init__(self, send: Send, extra_headers: list[tuple[bytes, bytes]], can_fall_back: bool) -> None:
        self.send = send
        self.extra = extra_headers
        self.can_fall_back = can_fall_back
        self.status: int | None = None
        self.held: list[Message] = []

    @property
    def failed(self) -> bool:
        return self.status is None or _failed(self.status)

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            message = {**message, "headers": list(message.get("headers", [])) + self.extra}
            if self.can_fall_back and _failed(self.status):
                self.held.append(message)  # with the route headers: it is replayed when the walk ends here
                return
        elif self.held:
            self.held.append(message)
            return
        await self.send(message)


class DynamicRoutes:
    def __init__(self, app: ASGIApp, *, routes: RouteStore, limit_store: LimitStore, max_body_bytes: int,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 draw: Callable[[], float] = random.random) -> None:
        self.app = app
        self.routes = routes
        self.limit_store = limit_store
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.draw = draw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        where = locate(scope) if scope["type"] == "http" else None
        if where is None or where.provider != "compat":
            await self.app(scope, receive, send)
            return
        ex = Exchange.of(scope)
        try:
            value = ex.header(scope, b"content-encoding")
            encoding = value.decode("latin-1") if value is not None else None
            body = await read_json(ex, receive, encoding, self.max_body_bytes)
        except RequestRefused:
            await self.app(scope, receive, send)  # the router answers with the same refusal (kept on the Exchange)
            return
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not model.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        await self._run(scope, receive, send, ex, body, model.removeprefix(PREFIX))

    async def _run(self, scope: Scope, receive: Receive, send: Send, ex: Exchange, body: dict[str, Any],
                   name: str) -> None:
        assert ex.account_id is not None and ex.gateway_id is not None
        found = await self.routes.deployed_version(ex.account_id, ex.gateway_id, name)
        if found is None:
            await _refuse(scope, receive, send, ex, UnknownDynamicRoute(name))
            return
        version, graph = found
        attributes = attributes_of(ex)
        route_headers = [(b"cf-aig-route", name.encode()), (b"cf-aig-route-version", str(version).encode())]
        tried = 0
        last: _Attempt | None = None
        served = False
        elements = {e["id"]: e for e in graph["elements"]}

        async def budget_ok(rule_name: str, models: list[str]) -> bool:
            """Budget left in every bucket of the rule the success branch would spend in: this request's metadata and
            identity, with each model the branch may call (a rule scoped to, or split by, a model or provider)."""
            rules = await self.limit_store.rules(ex.account_id or "", ex.gateway_id or "")
            rule = next((r for r in rules if r.name == rule_name), None)
            if rule is None:
                return True
            now = self.clock()
            keys: set[str] = set()
            for model in models or [""]:
                provider, _, name = model.partition("/")
                called = {**attributes, **model_attributes(provider, name)} if name else attributes
                keys.update(rule.bucket_keys(called))
            for key in sorted(keys):
                if await bucket_remaining(self.limit_store.db, rule, key, now) <= 0:
                    return False
            return True

        async def attempt(step: ModelStep) -> bool:
            nonlocal tried, last, served
            attempt_body = {**body, "model": step.model}
            _reset(ex, attempt_body, tried)
            gate = _Attempt(send, [*route_headers, (b"cf-aig-route-element", step.element_id.encode())],
                            can_fall_back="fallback" in elements[step.element_id])
            tried += 1
            await self.app(_with_step_options(scope, step), receive, gate)
            last = gate
            served = not gate.failed
            return served

        await walk(graph, attributes, budget_ok, attempt, draw=self.draw)
        if served:
            return
        if last is not None and last.held:
            for message in last.held:
                await send(message)
            return
        if last is None:
            await _refuse(scope, receive, send, ex, RouteServedNothing(name))


async def _refuse(scope: Scope, receive: Receive, send: Send, ex: Exchange,
                  error: UnknownDynamicRoute | RouteServedNothing) -> None:
    answer = to_response(error)
    ex.status_code, ex.error = answer.status, answer.message
    await answer.render()(scope, receive, send)


def _reset(ex: Exchange, body: dict[str, Any], step: int) -> None:
    """Start a fresh attempt: the new body (parsed again into a call by the router), and nothing left from the
    previous attempt's call or answer."""
    ex.json_body = body
    ex.call = ex.target = ex.refusal = None
    ex.usage_estimated = ex.upstream_sent = False
    ex.step = step
    ex.status_code = ex.error = ex.cost_usd = ex.ttfb_ms = ex.response_body = None
    ex.usage = Usage()
    ex.response_size = 0
    ex.reservation = ex.budget_remaining_usd = None


def _with_step_options(scope: Scope, step: ModelStep) -> Scope:
    if step.timeout_ms is None and step.retries is None:
        return scope
    names = set()
    extra: list[tuple[bytes, bytes]] = []
    if step.timeout_ms is not None:
        names.add(b"cf-aig-request-timeout")
        extra.append((b"cf-aig-request-timeout", str(max(step.timeout_ms, 1)).encode()))
    if step.retries is not None:
        names.add(b"cf-aig-max-attempts")
        extra.append((b"cf-aig-max-attempts", str(min(step.retries + 1, MAX_ATTEMPTS)).encode()))
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in names] + extra
    return {**scope, "headers": headers}
