"""ProviderRouter: the innermost app. Forwards a call to its provider, relays the answer through the target's
translator (gateway/providers/base.py `Translator`: native routes as the provider sent it, the compat endpoint in
OpenAI's shapes), and records usage and cost on the Exchange.

- `prepare` (also called by outer layers that need the target early, such as SpendLimits) parses the path,
  reads the body once (413 past the limit), validates the `cf-aig-*` headers (400), resolves the gateway (404),
  the adapter, the key and the billing mode (400), and keeps the `Target` on the Exchange.
- JSON answers up to `json_buffer_limit` bytes are read whole so that `cf-aig-cost` can go in the headers;
  larger ones stream through (their usage is read from the captured head and tail, their cost goes to the log).
- SSE answers stream event by event through one relay loop (`_stream_sse`, every provider, native or compat);
  usage is read as events pass; an OpenAI usage chunk the client did not ask for is dropped. Nothing is
  buffered beyond one event. A compat answer that is not a stream is read whole and re-shaped (`_relay_whole`).
- Upstream failures before the first byte: answered as gateway/errors.py maps them (502 / 504, naming the
  provider), in the provider's error shape (`refuse`). After the first byte nothing can be retried or
  re-statused: the stream just ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import httpx
from starlette.types import Message, Receive, Scope, Send

from gateway.errors import (
    ClientLeft,
    CompatError,
    CompatUpstreamError,
    GatewayError,
    HeaderError,
    InvalidRequest,
    NotFound,
    RequestRefused,
    UpstreamBroke,
    UpstreamFailure,
    UpstreamNotJSON,
    to_response,
)
from gateway.exchange import Exchange, Usage
from gateway.gateways import GatewayStore
from gateway.paths import locate
from gateway.pricing import cost_of
from gateway.providers import upstream
from gateway.providers.call import off_loop, parse_call, read_json
from gateway.providers.compat_route import compat_target
from gateway.providers.forward import (
    response_headers,
    send_with_retries,
    upstream_headers,
)
from gateway.providers.left_early import count_delivered, estimated_usage
from gateway.providers.openai import dumps
from gateway.providers.options import parse_options
from gateway.providers.sse import SSEParser
from gateway.providers.store import ProviderStore
from gateway.providers.target import Target, resolve
from gateway.settings import Settings

log = logging.getLogger("spendgate.router")

JSON_BUFFER_LIMIT = 2 * 1024 * 1024
MAX_WHOLE_ANSWER = 32 * 1024 * 1024  # what is read of an answer the translator re-shapes (compat)
CAPTURE = 64 * 1024


def make_client(max_connections: int = 1000) -> httpx.AsyncClient:
    """One shared client (gateway/providers/upstream.py): httpx's API over aiohttp's transport, whose session the
    router's calls use directly (httpx's default pool collapses under load, and its client layer costs as much CPU
    as the rest of the call: measured in bench/proxy.py, see bench/README.md)."""
    return upstream.UpstreamClient(max_connections)


# headers every layer must read the same way: sent twice, one layer could read the first and another the last
SINGLE_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key", "content-encoding", "content-type",
                            "cf-access-jwt-assertion"})


def header_map(scope: Scope) -> dict[str, str]:
    """Lower-cased names to values; a `cf-aig-*`, key or encoding header sent twice is refused (HeaderError)."""
    out: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        if name in out and (name in SINGLE_HEADERS or name.startswith("cf-aig-")):
            raise HeaderError(name, f"the {name} header was sent more than once")
        out[name] = raw_value.decode("latin-1")
    return out


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
        """Resolve the request's call and target once (kept on the Exchange); raises RequestRefused, the same
        refusal every time it is asked (a later reader must never get further than the first one did)."""
        ex = Exchange.of(scope)
        if ex.target is not None:
            return ex.target
        if isinstance(ex.refusal, RequestRefused):
            raise ex.refusal
        try:
            target = await self._prepare(scope, receive, ex)
        except RequestRefused as exc:
            ex.refusal = exc
            raise
        ex.target = target
        return target

    async def _prepare(self, scope: Scope, receive: Receive, ex: Exchange) -> Target:
        where = locate(scope)
        if where is None:
            raise NotFound("expected /v1/{account}/{gateway}/{provider}/{path}")
        if where.error is not None:
            raise InvalidRequest(where.error)
        gateway = ex.gateway or await self.gateways.get(where.account, where.gateway)  # UnknownAccount, ...
        ex.gateway = gateway
        headers = header_map(scope)  # HeaderError
        options = parse_options(headers)  # HeaderError
        if options.custom_cost is not None and not gateway.settings.allow_custom_cost:
            raise HeaderError("cf-aig-custom-cost", "cf-aig-custom-cost is not allowed on this gateway")
        body = await read_json(ex, receive, headers.get("content-encoding"), self.settings.max_body_bytes)
        config = await self.providers.get(where.account, where.gateway)
        query = scope.get("query_string", b"").decode("latin-1")
        limits = (gateway.settings.default_max_output_tokens, gateway.settings.inject_max_tokens)
        if where.provider == "compat":
            target = compat_target(ex, gateway, self.settings, config, scope["method"], where.rest, headers,
                                   body, options, limits)
        else:
            ex.call = parse_call(method=scope["method"], provider=where.provider, path=where.rest, query=query,
                                 body=body, raw_body=ex.decoded_body or b"", default_output=limits[0],
                                 inject_limit=limits[1], json_error=ex.json_error, input_bound=ex.input_bound,
                                 reference=(ex.input_reference,) if ex.json_body is not None else None)
            target = resolve(exchange=ex, gateway=gateway, settings=self.settings, config=config, call=ex.call,
                             headers=headers, options=options)
        call = ex.call
        assert call is not None
        if call.endpoint is not None and not target.compat:  # compat bodies are translated when served (forward)
            body, hide = target.translator.request(call)
            target.content = await off_loop(len(ex.decoded_body or b""), lambda: dumps(body))
            target.hide_usage_chunk = hide
        else:
            target.content = call.raw_body
        ex.provider, ex.model, ex.billing_mode = target.provider, target.model, target.billing_mode
        ex.custom_cost = options.custom_cost is not None
        return target

    # -- the ASGI app ------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        ex = Exchange.of(scope)
        try:
            target = await self.prepare(scope, receive)
        except RequestRefused as exc:
            await self.refuse(send, ex, exc, None)
            return
        await self._serve_while_connected(scope, receive, send, ex, target)

    async def _serve_while_connected(self, scope: Scope, receive: Receive, send: Send, ex: Exchange,
                                     target: Target) -> None:
        """Serve the call, and stop it as soon as the client leaves.

        The ASGI server does not cancel a request whose client went away, it only says so on `receive` (which
        nothing else reads once the body is kept). So the call runs beside a watch on `receive`: when the client
        leaves, the call is cancelled wherever it is, which closes the upstream connection (a provider stops
        generating what nobody reads; the money is the user's). Before the first byte, the answer is 499; after
        it, the stream just ends. Either way, once the call was handed to the provider it is billed what the
        gateway can know of it (gateway/providers/left_early.py), never $0, and SpendLimits settles at once.
        """
        started = False
        finished = False  # the call returned or raised
        stopped = False  # the watch cancelled the call: the client left
        task = asyncio.current_task()
        assert task is not None

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        def on_watch(watch: asyncio.Task[bool]) -> None:
            nonlocal stopped
            if finished or watch.cancelled() or watch.exception() is not None or not watch.result():
                return
            # an answer that is complete is only waiting for its usage (hidden reasoning is billed from it): let it
            # arrive; anything else stops now
            if not (started and ex.answer_finished):
                stopped = True
                task.cancel()

        # The call runs in this task (no second task per request); the watch cancels it here when the client left.
        watch = asyncio.ensure_future(_client_gone(receive))
        watch.add_done_callback(on_watch)
        try:
            await self.forward(scope, tracked, ex, target)
        except asyncio.CancelledError:
            # ours (the client left) unless someone cancelled this task too: then it goes on out
            if not stopped or task.uncancel() > 0:
                raise
        else:
            if stopped:  # the call swallowed the cancellation and ended anyway: nothing is left pending
                task.uncancel()
            return
        finally:
            finished = True
            watch.cancel()
            if watch.done() and not watch.cancelled():
                watch.exception()  # retrieved: a receive that failed is only a watch that could not be kept
        if not started and ex.upstream_sent:
            ex.status_code = 499  # the provider has the prompt: billed below as any call that ended early
            self.record_cost(ex, target, ex.usage, complete=False)
        if not started:
            await self.refuse(send, ex, ClientLeft(target.provider), target)
        else:  # a reason given already (a guardrail ended the stream, and then the client left) stays the reason
            ex.error = ex.error or f"the client went away; the {target.provider} call was stopped"

    async def open(self, scope: Scope, ex: Exchange, target: Target, content: bytes) -> httpx.Response:
        """Send the call: the URL from the recognised endpoint, the body the gateway understood."""
        auth = target.adapter.auth_headers(target.key) if target.key is not None else None
        headers = upstream_headers(scope["headers"], auth, gateway_key=not target.passthrough)
        if ex.call is not None and ex.call.endpoint is not None:
            headers["content-type"] = "application/json"
        url = target.adapter.upstream_url(target.base_url, target.path, target.query)
        method = ex.call.method if ex.call is not None else scope["method"]
        attempt = upstream.prepare(self.client, method, target.base_url, url, headers, content)
        ex.upstream_sent = True  # from here on the provider may have the prompt, and may bill for it
        response, ex.timed_out_attempts = await send_with_retries(attempt, target.options, target.provider)
        ex.ttfb_ms = (time.perf_counter() - ex.started) * 1000
        ex.status_code = response.status_code
        return response

    async def forward(self, scope: Scope, send: Send, ex: Exchange, target: Target) -> None:
        """Send the call upstream and relay the answer through the target's translator: a stream event by event;
        a JSON answer re-shaped whole when the translator re-shapes answers, else as it comes."""
        translator = target.translator
        content = target.content
        if target.compat:
            call = ex.call
            assert call is not None
            size = len(ex.decoded_body or b"")
            try:
                payload, target.hide_usage_chunk = await off_loop(size, lambda: translator.request(call))
            except CompatError as exc:
                await self.refuse(send, ex, exc, target)
                return
            content = await off_loop(size, lambda: dumps(payload))
        try:
            response = await self.open(scope, ex, target, content)
        except UpstreamFailure as exc:
            await self.refuse(send, ex, exc, target)
            self.bill_unanswered(ex, target, exc.sent)
            return
        try:
            if translator.streams(response):
                await self._stream_sse(send, ex, target, response)
            elif translator.reshapes:
                await self._relay_whole(send, ex, target, response)
            else:
                await self._relay(send, ex, target, response)
        except httpx.HTTPError as exc:
            # Only `_relay_whole` lets one out (the others end their answer themselves), so nothing was sent yet: a
            # 502 naming the provider rather than a 500. `ex.status_code` keeps the provider's status, as in
            # `_relay`: a 2xx answer that broke is billed what the gateway saw of it, estimated.
            message = f"{target.provider} broke the connection before its answer was complete: {type(exc).__name__}"
            await self.refuse(send, ex, UpstreamBroke(target.provider, message), target)
            ex.status_code = response.status_code
            self.record_cost(ex, target, Usage(), complete=False)
        finally:
            await response.aclose()

    def gateway_headers(self, ex: Exchange, target: Target) -> list[tuple[bytes, bytes]]:
        headers = [(b"cf-aig-provider", target.provider.encode()), (b"cf-aig-step", str(ex.step).encode())]
        if target.model:
            headers.append((b"cf-aig-model", target.model.encode("latin-1", "replace")))
        return headers

    @staticmethod
    def price(ex: Exchange, target: Target) -> Decimal | None:
        """The cost of `ex.usage` at the target's prices, at the time the request came."""
        return cost_of(target.provider, target.model, ex.usage, at=datetime.fromtimestamp(ex.started_at, UTC),
                       override=target.price, custom=target.options.custom_cost)

    def bill_unanswered(self, ex: Exchange, target: Target, sent: int) -> None:
        """Attempts that reached the provider and timed out: it had the prompt each time, so each is billed its
        input (estimated; the answer never came, so its output is not known)."""
        call = ex.call
        if not sent or call is None or call.endpoint is None or call.endpoint.free:
            return
        ex.usage = Usage(input_tokens=call.input_bound * sent, output_tokens=0, service_tier=call.service_tier)
        ex.usage_estimated = True
        ex.cost_usd = self.price(ex, target)

    def record_cost(self, ex: Exchange, target: Target, usage: Usage, *, complete: bool = True) -> None:
        """The call's usage and cost, one number for the log, the `cf-aig-cost` header and the ledger.

        `complete`: the provider sent its final usage. When it did not (a stream cut or stopped, a client that
        left, an answer without usage) but the call was answered or handed to the provider, the usage is estimated
        from what the gateway saw (gateway/providers/left_early.py) and the row says `usage_estimated`. An answer
        that is an error (4xx/5xx from the provider) costs nothing; a free endpoint (token counting) costs 0."""
        ex.usage = usage
        status = ex.status_code
        earlier = ex.timed_out_attempts  # attempts before this answer that had the prompt and timed out
        if status is None or (status >= 400 and status != 499):
            self.bill_unanswered(ex, target, earlier)
            return
        call = ex.call
        if call is not None and call.endpoint is not None and call.endpoint.free:
            ex.cost_usd = Decimal(0)
            return
        if not complete and ex.upstream_sent and call is not None and call.endpoint is not None:
            cap = call.output_bound if call.limit_field is not None else None
            ex.usage = estimated_usage(usage, call.input_bound, ex.delivered_events, ex.delivered_text, cap)
            ex.usage_estimated = True
        if call is not None:
            # what the answer did not say: the tier the request asked for, the searches a search model always runs
            if ex.usage.service_tier is None and call.service_tier is not None:
                ex.usage = replace(ex.usage, service_tier=call.service_tier)
            if call.searches_per_call and (ex.usage.web_searches or 0) < call.searches_per_call:
                ex.usage = replace(ex.usage, web_searches=call.searches_per_call)
            if earlier and call.endpoint is not None:
                ex.usage = replace(ex.usage, input_tokens=(ex.usage.input_tokens or 0) + call.input_bound * earlier)
                ex.usage_estimated = True
        ex.cost_usd = self.price(ex, target)

    async def _relay(self, send: Send, ex: Exchange, target: Target, response: httpx.Response) -> None:
        """Non-SSE: buffer up to the limit (for cf-aig-cost), stream the rest through.

        An upstream that breaks while the held part is read (status line and headers came, then the connection
        dropped) has sent nothing to the client yet: it gets a 502 naming the provider, instead of the exception
        escaping as a 500. `ex.status_code` keeps the provider's 2xx: it may have billed us, so the call settles
        like a stream that died without usage (the full reservation, gateway/middleware/spend_plan.py).
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
            await self.refuse(send, ex, UpstreamBroke(target.provider, message), target)
            ex.status_code = response.status_code
            count_delivered(ex, head.decode("utf-8", "replace"))
            self.record_cost(ex, target, Usage(), complete=False)
            return
        headers = response_headers(response) + self.gateway_headers(ex, target)
        if not overflow:
            data: Any = None
            try:
                data = json.loads(head) if head else None
            except ValueError:
                pass
            usage = target.adapter.usage_from_json(target.path, data)
            if not reported(usage):
                count_delivered(ex, head.decode("utf-8", "replace"))
            self.record_cost(ex, target, usage, complete=reported(usage))
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
        scan = BodyScan()
        body = bytes(head)
        del head
        scan.feed(body)
        await send({"type": "http.response.body", "body": body, "more_body": True})
        del body
        try:
            async for chunk in stream:
                size += len(chunk)
                tail = (tail + chunk)[-CAPTURE:]
                scan.feed(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            ex.error = f"{target.provider} stream broke: {type(exc).__name__}"
        ex.response_size = size
        await send({"type": "http.response.body", "body": b""})
        usage = usage_from_fragments(target, first, tail, scan,
                                     asked_tier=ex.call.service_tier if ex.call is not None else None)
        if not reported(usage):
            count_delivered(ex, (first + tail).decode("utf-8", "replace"))
        self.record_cost(ex, target, usage, complete=reported(usage) and ex.error is None)

    async def _relay_whole(self, send: Send, ex: Exchange, target: Target, response: httpx.Response) -> None:
        """An answer the translator re-shapes (compat): read whole (up to MAX_WHOLE_ANSWER), then sent as the
        translator makes it: the provider's error, or its JSON answer with `cf-aig-cost`. A body that is not JSON
        is a 502 in the client's error shape."""
        raw = await _read_whole(response)
        translator = target.translator
        if response.status_code >= 400:
            ex.error = f"{target.provider} answered {response.status_code}"
            await _send_json(send, response.status_code,
                             translator.provider_error(target.provider, response.status_code, raw),
                             self.gateway_headers(ex, target))
            return
        try:
            data = json.loads(raw)
        except ValueError:
            answer = to_response(UpstreamNotJSON(target.provider))
            await _send_json(send, answer.status, json.dumps(
                translator.error_body(answer.status, answer.message, None)).encode())
            ex.status_code = answer.status
            return
        usage = target.adapter.usage_from_json(target.path, data)
        self.record_cost(ex, target, usage, complete=reported(usage))
        headers = self.gateway_headers(ex, target)
        if ex.cost_usd is not None:
            headers.append((b"cf-aig-cost", format(ex.cost_usd.normalize(), "f").encode()))
        encoded = json.dumps(translator.answer(data)).encode()
        ex.response_size = len(encoded)
        ex.response_body = encoded
        await _send_json(send, response.status_code, encoded, headers)

    async def _stream_sse(self, send: Send, ex: Exchange, target: Target, response: httpx.Response) -> None:
        """The one relay of streamed answers: each event the client may see goes through the translator (native:
        as it came; compat: as OpenAI chunks) as soon as it is whole. A stream the provider ends with an error
        event ends with the translator's error event; a broken one just ends."""
        translator = target.translator
        headers = translator.stream_headers(response_headers(response)) + self.gateway_headers(ex, target)
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        parser = SSEParser()
        reader = target.adapter.stream_usage(target.path, target.hide_usage_chunk)
        size = 0

        async def emit(data: bytes) -> None:
            nonlocal size
            size += len(data)
            await send({"type": "http.response.body", "body": data, "more_body": True})

        try:
            try:
                async for chunk in response.aiter_raw():
                    out = bytearray()
                    for event in parser.feed(chunk):
                        if not reader.on_event(event):  # else: the usage chunk the client did not ask for
                            count_delivered(ex, event.data)
                            out += translator.feed(event)
                    ex.answer_finished = reader.final or getattr(reader, "finished", False)
                    if out:
                        await emit(bytes(out))
                last = translator.finish(parser.pending)
                if last:
                    await emit(last)
            except CompatUpstreamError as exc:  # after the first byte: the stream ends with the error event
                ex.error = str(exc)
                await emit(translator.failed(exc))
        except httpx.HTTPError as exc:
            ex.error = f"{target.provider} stream broke: {type(exc).__name__}"
        finally:
            ex.response_size = size
            if getattr(reader, "failed", False) and ex.error is None:
                ex.error = f"{target.provider} ended the stream with response.failed"  # billed; never cached
            self.record_cost(ex, target, reader.usage, complete=reader.final)
        await send({"type": "http.response.body", "body": b""})

    async def refuse(self, send: Send, ex: Exchange, error: GatewayError, target: Target | None) -> None:
        """Answer an error as gateway/errors.py maps it, in the shape the client's API expects (the provider's, or
        OpenAI's on compat; the gateway's own before a target is known)."""
        answer = to_response(error)
        status, message = answer.status, answer.message
        ex.status_code = status
        ex.error = message
        if target is not None:
            payload: dict[str, Any] = target.translator.error_body(status, message, answer.fields.get("param"))
        else:
            payload = answer.body
        body = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _read_whole(response: httpx.Response) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) > MAX_WHOLE_ANSWER:
            break
    return bytes(data)


async def _send_json(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
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


_TIER_RE = re.compile(rb'"service_tier"\s*:\s*"([a-z_]{1,20})"')


def reported(usage: Usage) -> bool:
    return usage.input_tokens is not None or usage.output_tokens is not None


# dearer tiers rank higher; a tier not named here ranks with the standard ones
_TIER_RANK = {"flex": 0, "batch": 0, "priority": 2, "fast": 2}


class BodyScan:
    """What an answer too large to buffer says about its price, read from every byte as it passes (not only from
    the windows kept at its ends): each `"service_tier": "…"` it names and its `"web_search_call"` items. A client
    controls part of such a body (the Responses API echoes its tools, schemas and metadata), so a planted tier can
    only make the price dearer (the dearest named is billed) and a planted item only adds a search."""

    _KEEP = 64  # bytes kept between chunks: longer than a whole match, so one split by a chunk is still found

    def __init__(self) -> None:
        self.tiers: set[str] = set()
        self.searches = 0
        self._carry = b""

    def feed(self, chunk: bytes) -> None:
        window = self._carry + chunk
        start = len(self._carry)  # a match ending inside the carry was counted with the chunk before
        for match in _TIER_RE.finditer(window):
            if match.end() > start:
                self.tiers.add(match.group(1).decode())
        self.searches += sum(1 for m in _SEARCH_RE.finditer(window) if m.end() > start)
        self._carry = window[-self._KEEP:]

    def tier(self, asked: str | None) -> str | None:
        """The dearest tier the body names; none named: the request's, when it asked for a dearer one."""
        if not self.tiers:
            return asked if _TIER_RANK.get(asked or "", 1) > 1 else None
        return max(sorted(self.tiers), key=lambda tier: _TIER_RANK.get(tier, 1))


_SEARCH_RE = re.compile(rb'"web_search_call"')


def usage_from_fragments(target: Target, head: bytes, tail: bytes, scan: BodyScan, *,
                         asked_tier: str | None = None) -> Usage:
    """Usage of a JSON body too large to buffer: the usage object from its tail (OpenAI, Gemini) or head; its
    tier and searches from `scan`, which saw the whole body."""
    for fragment in (tail, head):
        for match in reversed(list(_USAGE_RE.finditer(fragment))):
            try:
                value = json.loads(match.group(2))
            except ValueError:
                continue
            usage = target.adapter.usage_from_json(target.path, {match.group(1).decode(): value})
            if usage.input_tokens is not None or usage.output_tokens is not None:
                return replace(usage, service_tier=scan.tier(asked_tier) or usage.service_tier,
                               web_searches=scan.searches or usage.web_searches)
    return Usage()
