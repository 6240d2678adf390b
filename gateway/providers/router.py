"""ProviderRouter: the innermost app. Forwards a call to its provider, streams the answer back untouched, and
records usage and cost on the Exchange.

- `prepare` (also called by outer layers that need the target early, such as SpendLimits) parses the path,
  reads the body once (413 past the limit), validates the `cf-aig-*` headers (400), resolves the gateway (404),
  the adapter, the key and the billing mode (400), and keeps the `Target` on the Exchange.
- JSON answers up to `json_buffer_limit` bytes are read whole so that `cf-aig-cost` can go in the headers;
  larger ones stream through (their usage is read from the captured head and tail, their cost goes to the log).
- SSE answers stream event by event; usage is read as events pass; an OpenAI usage chunk the client did not
  ask for is dropped. Nothing is buffered beyond one event.
- Upstream failures before the first byte: 502 / 504 with a JSON error naming the provider (in the provider's
  error shape). After the first byte nothing can be retried or re-statused: the stream just ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from starlette.types import Message, Receive, Scope, Send

from gateway.exchange import BodyTooLarge, Exchange, Usage
from gateway.gateways import GatewayStore, UnknownAccount, UnknownGateway
from gateway.paths import locate
from gateway.pricing import cost_of
from gateway.providers.forward import (
    UpstreamFailure,
    response_headers,
    send_with_retries,
    upstream_headers,
)
from gateway.providers.options import HeaderError, parse_options
from gateway.providers.sse import SSEParser
from gateway.providers.store import ProviderStore
from gateway.providers.target import Target, TargetError, resolve
from gateway.settings import Settings

log = logging.getLogger("spendgate.router")

JSON_BUFFER_LIMIT = 2 * 1024 * 1024
CAPTURE = 64 * 1024


class RequestRefused(Exception):
    """A request refused before anything went upstream."""

    def __init__(self, status: int, message: str, header: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.header = header


def make_client(max_connections: int = 1000) -> httpx.AsyncClient:
    """One shared client. Transport: aiohttp under httpx's API (httpx's default pool collapses under load;
    measured in bench/proxy.py, see README)."""
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    transport = AiohttpTransport(limits=limits)
    return httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(30.0, read=600.0, pool=30.0))


def header_map(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class ProviderRouter:
    def __init__(self, *, settings: Settings, gateways: GatewayStore, providers: ProviderStore,
                 client: httpx.AsyncClient, json_buffer_limit: int = JSON_BUFFER_LIMIT) -> None:
        self.settings = settings
        self.gateways = gateways
        self.providers = providers
        self.client = client
        self.json_buffer_limit = json_buffer_limit

    # -- planning -------------------------------------------------------------------------------------------

    async def prepare(self, scope: Scope, receive: Receive) -> Target:
        """Resolve the request's target once (kept in scope state); raises RequestRefused."""
        state = scope.setdefault("state", {})
        if state.get("target") is not None:
            return state["target"]  # type: ignore[no-any-return]
        ex = Exchange.of(scope)
        where = locate(scope)
        if where is None:
            raise RequestRefused(404, "expected /v1/{account}/{gateway}/{provider}/{path}")
        try:
            gateway = ex.gateway or await self.gateways.get(where.account, where.gateway)
        except UnknownAccount:
            raise RequestRefused(404, f"unknown account {where.account!r}") from None
        except UnknownGateway:
            raise RequestRefused(404, f"unknown gateway {where.gateway!r}") from None
        ex.gateway = gateway
        headers = header_map(scope)
        try:
            options = parse_options(headers)
        except HeaderError as exc:
            raise RequestRefused(400, str(exc), exc.header) from None
        if options.custom_cost is not None and not gateway.settings.allow_custom_cost:
            raise RequestRefused(400, "cf-aig-custom-cost is not allowed on this gateway", "cf-aig-custom-cost")
        try:
            body = await ex.read_body(receive, self.settings.max_body_bytes)
        except BodyTooLarge as exc:
            raise RequestRefused(413, str(exc)) from None
        parsed: Any = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                if where.provider == "compat":
                    raise RequestRefused(400, "the body must be JSON") from None
        ex.json_body = parsed
        config = await self.providers.get(where.account, where.gateway)
        query = scope.get("query_string", b"").decode("latin-1")
        try:
            if where.provider == "compat":
                from gateway.providers.compat_route import compat_target

                target = compat_target(ex, gateway, self.settings, config, where.rest, headers, parsed, options)
            else:
                target = resolve(exchange=ex, gateway=gateway, settings=self.settings, config=config,
                                 provider=where.provider, path=where.rest, query=query, headers=headers,
                                 body=parsed, options=options)
        except TargetError as exc:
            raise RequestRefused(exc.status, exc.message) from None
        ex.provider, ex.model, ex.billing_mode = target.provider, target.model, target.billing_mode
        ex.custom_cost = options.custom_cost is not None
        state["target"] = target
        return target

    def retarget(self, scope: Scope, target: Target) -> None:
        scope.setdefault("state", {})["target"] = target

    # -- the ASGI app ------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        ex = Exchange.of(scope)
        try:
            target = await self.prepare(scope, receive)
        except RequestRefused as exc:
            await self._refuse(send, ex, exc.status, exc.message, None, header=exc.header)
            return
        await self._serve_while_connected(scope, receive, send, ex, target)

    async def _serve_while_connected(self, scope: Scope, receive: Receive, send: Send, ex: Exchange,
                                     target: Target) -> None:
        """Serve the call, but stop waiting for upstream if the client leaves before any answer started.

        Why: the ASGI server does not cancel a request whose client went away, it only says so on `receive` (which
        nothing else reads once the body is kept). Without this watch, a client that gave up on a hanging upstream
        kept its call — and the call's spend reservation and credit hold — open until the upstream answered or the
        first-byte timeout (300 s without `cf-aig-request-timeout`) passed. Now the wait is cancelled, the call
        ends as 499 (client closed request; no 2xx, so nothing is billed) and SpendLimits releases at once.
        Once the answer started, nothing changes: the response runs to its end (sends to a gone client are dropped,
        the usage still arrives and is billed).
        """
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        if target.compat:
            from gateway.providers.compat_route import serve_compat

            work = asyncio.ensure_future(serve_compat(self, scope, tracked, ex, target))
        else:
            work = asyncio.ensure_future(self.forward(scope, tracked, ex, target))
        watch = asyncio.ensure_future(_client_gone(receive))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            gone = watch.done() and not watch.cancelled() and watch.exception() is None and watch.result()
            if gone and not work.done() and not started:
                work.cancel()
            await asyncio.wait({work})
        finally:
            watch.cancel()
            if watch.done() and not watch.cancelled():
                watch.exception()  # retrieved: a receive that failed is only a watch that could not be kept
            if not work.done():  # we were cancelled ourselves: cancel the call too, and let it clean up
                work.cancel()
                await asyncio.wait({work})
        if work.cancelled():
            await self._refuse(send, ex, 499, f"the client went away before {target.provider} answered", target)
            return
        work.result()  # re-raise what the call raised

    def build_request(self, scope: Scope, ex: Exchange, target: Target, body: Any, raw: bytes | None) -> httpx.Request:
        auth = target.adapter.auth_headers(target.key) if target.key is not None else None
        headers = upstream_headers(scope["headers"], auth)
        content = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        if raw is None and body is not None:
            headers["content-type"] = "application/json"
        url = target.adapter.upstream_url(target.base_url, target.path, target.query)
        return self.client.build_request(scope["method"], url, headers=headers, content=content)

    async def open(self, scope: Scope, ex: Exchange, target: Target, body: Any, raw: bytes | None
                   ) -> httpx.Response:
        request = self.build_request(scope, ex, target, body, raw)
        response, _attempts = await send_with_retries(self.client, request, target.options, target.provider)
        ex.ttfb_ms = (time.perf_counter() - ex.started) * 1000
        ex.status_code = response.status_code
        return response

    async def forward(self, scope: Scope, send: Send, ex: Exchange, target: Target) -> None:
        body, hide = target.adapter.prepare(target.path, ex.json_body, target.stream)
        raw = ex.body if body is ex.json_body else None
        try:
            response = await self.open(scope, ex, target, body, raw)
        except UpstreamFailure as exc:
            await self._refuse(send, ex, exc.status, str(exc), target)
            return
        try:
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" in content_type:
                await self._stream_sse(send, ex, target, response, hide)
            else:
                await self._relay(send, ex, target, response)
        finally:
            await response.aclose()

    def gateway_headers(self, ex: Exchange, target: Target) -> list[tuple[bytes, bytes]]:
        headers = [(b"cf-aig-provider", target.provider.encode()), (b"cf-aig-step", str(ex.step).encode())]
        if target.model:
            headers.append((b"cf-aig-model", target.model.encode("latin-1", "replace")))
        return headers

    def record_cost(self, ex: Exchange, target: Target, usage: Usage) -> None:
        ex.usage = usage
        if ex.status_code is not None and ex.status_code < 400:
            ex.cost_usd = cost_of(target.provider, target.model, usage, at=datetime.fromtimestamp(ex.started_at, UTC),
                                  override=target.price, custom=target.options.custom_cost)

    async def _relay(self, send: Send, ex: Exchange, target: Target, response: httpx.Response) -> None:
        """Non-SSE: buffer up to the limit (for cf-aig-cost), stream the rest through.

        An upstream that breaks while the held part is read (status line and headers came, then the connection
        dropped) has sent nothing to the client yet: it gets a 502 naming the provider, instead of the exception
        escaping as a 500. `ex.status_code` keeps the provider's 2xx: it may have billed us, so the call settles
        like a stream that died without usage (the full reservation, gateway/limits/planner.py).
        """
        head = bytearray()
        stream = response.aiter_raw()
        overflow = False
        try:
            async for chunk in stream:
                head += chunk
                if len(head) > self.json_buffer_limit:
                    overflow = True
                    break
        except httpx.HTTPError as exc:
            message = f"{target.provider} broke the connection before its answer was complete: {type(exc).__name__}"
            await self._refuse(send, ex, 502, message, target)
            ex.status_code = response.status_code
            return
        headers = response_headers(response) + self.gateway_headers(ex, target)
        if not overflow:
            data: Any = None
            try:
                data = json.loads(head) if head else None
            except ValueError:
                pass
            self.record_cost(ex, target, target.adapter.usage_from_json(target.path, data))
            if ex.cost_usd is not None:
                headers.append((b"cf-aig-cost", format(ex.cost_usd.normalize(), "f").encode()))
            headers.append((b"content-length", str(len(head)).encode()))
            ex.response_size = len(head)
            ex.response_body = bytes(head)
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            await send({"type": "http.response.body", "body": bytes(head)})
            return
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        first = bytes(head[:CAPTURE])
        tail = bytes(head[-CAPTURE:])
        size = len(head)
        await send({"type": "http.response.body", "body": bytes(head), "more_body": True})
        del head
        try:
            async for chunk in stream:
                size += len(chunk)
                tail = (tail + chunk)[-CAPTURE:]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            ex.error = f"{target.provider} stream broke: {type(exc).__name__}"
        ex.response_size = size
        await send({"type": "http.response.body", "body": b""})
        self.record_cost(ex, target, usage_from_fragments(target, first, tail))

    async def _stream_sse(self, send: Send, ex: Exchange, target: Target, response: httpx.Response,
                          hide: bool) -> None:
        headers = response_headers(response) + self.gateway_headers(ex, target)
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        parser = SSEParser()
        reader = target.adapter.stream_usage(target.path, hide)
        size = 0
        try:
            async for chunk in response.aiter_raw():
                out = bytearray()
                for event in parser.feed(chunk):
                    if not reader.on_event(event):
                        out += event.raw
                if out:
                    size += len(out)
                    await send({"type": "http.response.body", "body": bytes(out), "more_body": True})
            if parser.pending:
                await send({"type": "http.response.body", "body": parser.pending, "more_body": True})
        except httpx.HTTPError as exc:
            ex.error = f"{target.provider} stream broke: {type(exc).__name__}"
        finally:
            ex.response_size = size
            self.record_cost(ex, target, reader.usage)
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, send: Send, ex: Exchange, status: int, message: str, target: Target | None,
                      header: str | None = None) -> None:
        ex.status_code = status
        ex.error = message
        if target is not None and target.compat:
            from gateway.providers.compat import openai_error

            payload: dict[str, Any] = openai_error(status, message)
        elif target is not None:
            payload = target.adapter.error_body(status, message)
            payload.setdefault("success", False)
        else:
            error: dict[str, Any] = {"message": message}
            if header:
                error["header"] = header
            payload = {"success": False, "error": error}
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def _client_gone(receive: Receive) -> bool:
    """True once the client disconnected: the body was already read, so a server's `receive` only waits for that.
    A `receive` that answers something else (a replay of the body first, a test double every time) is tried a few
    times, then not watched (False): never a busy loop."""
    for _ in range(3):
        if (await receive())["type"] == "http.disconnect":
            return True
    return False


_USAGE_RE = re.compile(rb'"(usage|usageMetadata)"\s*:\s*(\{[^{}]*(\{[^{}]*\}[^{}]*)*\})')


def usage_from_fragments(target: Target, head: bytes, tail: bytes) -> Usage:
    """Usage of a JSON body too large to buffer: the usage object from its tail (OpenAI, Gemini) or head."""
    for fragment in (tail, head):
        for match in reversed(list(_USAGE_RE.finditer(fragment))):
            try:
                value = json.loads(match.group(2))
            except ValueError:
                continue
            usage = target.adapter.usage_from_json(target.path, {match.group(1).decode(): value})
            if usage.input_tokens is not None or usage.output_tokens is not None:
                return usage
    return Usage()
