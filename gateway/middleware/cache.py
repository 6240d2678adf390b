"""ResponseCache: serve a call the gateway has answered before from the cache (gateway/cache/), before anything
is reserved or forwarded.

The layer sits just before SpendLimits. For a request the cache applies to (the gateway's `cache_ttl`, or
`cf-aig-cache-ttl`; not `cf-aig-skip-cache: true`; a POST to an endpoint the gateway understands), it resolves the
canonical call (the router's `prepare`, kept on the Exchange for the layers after it), computes the key
(gateway/cache/keys.py) and then:

- HIT: the stored answer is sent as it was first sent (a stream: its SSE bytes, whole), with
  `cf-aig-cache-status: HIT`. Nothing goes upstream and nothing is reserved (the layers inside are not called).
  The log row says `cached: true`, `cost_usd` 0; on unified billing the account is charged the gateway's
  `cache_hit_charge` (a fraction of the original call's cost) through the ledger, as usage without a hold.
- MISS: the call goes inward with `cf-aig-cache-status: MISS`; its answer is stored when it is complete and 2xx
  (never an error, a refusal, a cut stream, an answer a fallback model gave, or one larger than the bound).

Concurrent misses of the same key make one upstream call. Within the instance the first one leads
(gateway/cache/flight.py) and the others wait for it in memory; across instances the leader's claim on the row
(gateway/cache/store.py) makes other instances wait for the stored answer, polling, for at most the claim's lease.
Those that waited are served as hits; when the leader's answer could not be stored, each is served on its own.
The header is absent when the cache is off for the request.

A caller whose groups may not use the model (the gateway's identity policies) is never served a stored answer of
it: the cache does not apply, and SpendLimits refuses the request (403) as it refuses any.

A hit still counts as a request in the gateway's rate limits counting requests (not in those counting tokens):
`rates` reserves 1 in each before the hit is served, through the same reservation functions, and a full bucket
answers 429 instead (gateway/middleware/rate_limits.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.cache.flight import SingleFlight
from gateway.cache.keys import NO_OPTIONS, CacheOptions, cache_key, cache_options, has_cache_headers, scope_parts
from gateway.cache.store import CacheStore, Entry
from gateway.errors import HeaderError, RequestRefused, to_response
from gateway.exchange import Exchange
from gateway.ledger import Ledger
from gateway.limits.policies import Policy, allowed
from gateway.middleware.rate_limits import HitCounter
from gateway.money import to_nano
from gateway.providers.call import off_loop

if TYPE_CHECKING:
    from gateway.providers.target import Target

log = logging.getLogger("spendgate.cache")

MAX_ENTRY_BYTES = 8 * 1024 * 1024  # a larger answer is not stored (nor one larger than the gateway's bound)
REPLAYED_HEADERS = frozenset({"content-type", "cache-control", "cf-aig-provider", "cf-aig-model", "cf-aig-step"})
HIT = [(b"cf-aig-cache-status", b"HIT")]
MISS = (b"cf-aig-cache-status", b"MISS")

Prepare = Callable[[Scope, Receive], Awaitable["Target"]]
Policies = Callable[[str, str], Awaitable[list[Policy]]]  # a gateway's identity policies (LimitStore.policies)


class ResponseCache:
    """`prepare`: the router's (resolves the canonical call and the target once per request, or raises the
    refusal the router will answer with). `poll_s`: how often a request waiting for another instance's fill looks
    again (doubling up to 8x)."""

    def __init__(self, app: ASGIApp, *, prepare: Prepare, store: CacheStore, ledger: Ledger,
                 flight: SingleFlight | None = None, poll_s: float = 0.02, rates: HitCounter | None = None,
                 policies: Policies | None = None) -> None:
        self.app = app
        self.rates = rates
        self.policies = policies
        self.prepare = prepare
        self.store = store
        self.ledger = ledger
        self.flight = flight or SingleFlight()
        self.poll_s = poll_s
        self._chores: set[asyncio.Task[None]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ex = Exchange.of(scope)
        gateway = ex.gateway
        asked = has_cache_headers(scope["headers"])
        if gateway is None or (gateway.settings.cache_ttl is None and not asked):
            await self.app(scope, receive, send)
            return
        try:
            options = cache_options(scope["headers"]) if asked else NO_OPTIONS
        except HeaderError as exc:
            answer = to_response(exc)
            ex.status_code, ex.error = answer.status, answer.message
            await answer.render()(scope, receive, send)
            return
        ttl = options.ttl_s if options.ttl_s is not None else gateway.settings.cache_ttl
        key = await self._key(scope, receive, ex, options) if ttl and not options.skip else None
        if key is None or not ttl:
            await self.app(scope, receive, send)
            return
        await self._serve(scope, receive, send, ex, key, ttl)

    async def _key(self, scope: Scope, receive: Receive, ex: Exchange, options: CacheOptions) -> bytes | None:
        """The request's key; None when the cache does not apply to it (refused, not a call the gateway
        understands, or no identity on a gateway that scopes its cache by identity)."""
        try:
            target = await self.prepare(scope, receive)
        except RequestRefused:
            return None  # the router answers it
        call, gateway = ex.call, ex.gateway
        if call is None or call.endpoint is None or call.method != "POST" or gateway is None:
            return None
        if self.policies is not None:
            # a caller whose groups may not use this model gets no stored answer of it either: the request goes on
            # to SpendLimits, which refuses it (403) as it refuses a miss
            groups = list(ex.identity.groups) if ex.identity else []
            if not allowed(await self.policies(gateway.account_id, gateway.id), groups,
                           f"{target.provider}/{target.model}"):
                return None
        identity = None
        if gateway.settings.cache_scope == "identity":
            identity = _identity_of(ex)
            if identity is None:
                return None
        parts = scope_parts(scope["headers"], identity=identity, passthrough=target.passthrough, query=call.query)
        return await off_loop(len(ex.decoded_body or b""),  # type: ignore[no-any-return]
                              lambda: cache_key(call, scope["headers"], parts, options.key))

    async def _serve(self, scope: Scope, receive: Receive, send: Send, ex: Exchange, key: bytes, ttl: int) -> None:
        assert ex.gateway is not None
        account, gateway = ex.gateway.account_id, ex.gateway.id
        where = (account, gateway, key)
        flight, leader = self.flight.join(where)
        if not leader:
            entry = await flight.wait()
            if entry is not None:
                await self._hit(scope, receive, send, ex, entry)
            else:
                await self._miss(scope, receive, send, ex, None)
            return
        stored: Entry | None = None
        try:
            found, fill_id = await self._find_or_claim(account, gateway, key)
            if found is not None:
                stored = found
                self.flight.finish(where, flight, found)  # the others need not wait for this answer to go out
                await self._hit(scope, receive, send, ex, found)
                return
            fill = None if fill_id is None else _Fill(account, gateway, key, fill_id, ttl,
                                                       ex.gateway.settings.cache_max_mb * 1024 * 1024)
            stored = await self._miss(scope, receive, send, ex, fill)
        finally:
            self.flight.finish(where, flight, stored)

    async def _find_or_claim(self, account: str, gateway: str, key: bytes) -> tuple[Entry | None, uuid.UUID | None]:
        """(the stored entry, None), or (None, our claim id), or (None, None) after waiting a whole lease for
        another instance's fill: the request is then served on its own."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.store.lease.total_seconds()
        pause = self.poll_s
        while True:
            found = await self.store.lookup(account, gateway, key)
            if isinstance(found, Entry):
                return found, None
            if found is None:
                fill_id = uuid.uuid4()
                if await self.store.claim(account, gateway, key, fill_id):
                    return None, fill_id
                continue  # filled or claimed between the two statements: look again
            if loop.time() >= deadline:
                return None, None
            await asyncio.sleep(pause)  # another instance is filling it
            pause = min(pause * 2, self.poll_s * 8)

    async def _hit(self, scope: Scope, receive: Receive, send: Send, ex: Exchange, entry: Entry) -> None:
        counted = None if self.rates is None else await self.rates.reserve(ex)
        if counted is not None and not counted.ok:
            assert self.rates is not None
            answer = await self.rates.refusal(counted)
            ex.status_code, ex.error = answer.status, answer.message
            await answer.render()(scope, receive, send)
            return
        try:
            await self._serve_hit(send, ex, entry, [] if self.rates is None else self.rates.headers(counted))
        finally:
            if self.rates is not None:
                await self.rates.settle(counted)

    async def _serve_hit(self, send: Send, ex: Exchange, entry: Entry, extra: list[tuple[bytes, bytes]]) -> None:
        ex.cached = True
        ex.cost_usd = Decimal(0)
        ex.status_code = entry.status
        ex.response_size = len(entry.body)
        ex.response_body = entry.body
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in entry.headers] + HIT + extra
        if not _is_stream(entry):
            headers += [(b"content-length", str(len(entry.body)).encode()), (b"cf-aig-cost", b"0")]
        await send({"type": "http.response.start", "status": entry.status, "headers": headers})
        ex.ttfb_ms = (time.perf_counter() - ex.started) * 1000
        await send({"type": "http.response.body", "body": entry.body})
        await self._charge(ex, entry)

    async def _charge(self, ex: Exchange, entry: Entry) -> None:
        """Unified billing: the gateway's `cache_hit_charge` of the original cost, posted as usage."""
        gateway = ex.gateway
        if gateway is None or ex.billing_mode != "unified" or not entry.cost_nano:
            return
        amount = math.ceil(entry.cost_nano * gateway.settings.hit_charge)
        if amount > 0:
            await asyncio.shield(self.ledger.bill_cache_hit(gateway.account_id, amount, ex.request_id))

    async def _miss(self, scope: Scope, receive: Receive, send: Send, ex: Exchange, fill: _Fill | None) -> Entry | None:
        """Call inward; with `fill` (this request holds the claim), store the answer if it can be. The entry
        stored, or None."""
        capture = _Capture(min(MAX_ENTRY_BYTES, fill.max_bytes) if fill is not None else 0)
        step, call = ex.step, ex.call

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), MISS]
            capture.see(message)
            await send(message)

        renewing = None if fill is None else asyncio.get_running_loop().create_task(self._renew(fill))
        try:
            await self.app(scope, receive, sender)
        except BaseException:
            if fill is not None:
                self._abandon(fill)
            raise
        finally:
            if renewing is not None:
                renewing.cancel()
        if fill is None:
            return None
        entry = capture.entry(ex) if ex.step == step and ex.call is call else None
        if entry is None:
            self._abandon(fill)
            return None
        try:
            evicted = await self.store.fill(fill.account, fill.gateway, fill.key, fill.fill_id, entry, fill.ttl,
                                            fill.max_bytes)
        except Exception as exc:  # the answer went out; only its copy is lost (the claim's lease ends the claim)
            log.warning("could not store an answer in the cache: %s", exc)
            return None
        if evicted:
            log.info("cache of %s/%s over %d MB: %d oldest entries evicted", fill.account, fill.gateway,
                     fill.max_bytes // (1024 * 1024), evicted)
        return entry if evicted is not None else None

    async def _renew(self, fill: _Fill) -> None:
        """Keep the claim while the answer is coming (a stream longer than a lease), every third of a lease, until
        the call ends (cancelled then) or the claim is lost."""
        every = self.store.lease.total_seconds() / 3
        while True:
            await asyncio.sleep(every)
            try:
                if not await self.store.renew(fill.account, fill.gateway, fill.key, fill.fill_id):
                    return
            except Exception as exc:  # the lease then ends the claim, as if this instance had died
                log.warning("could not renew a cache claim: %s", exc)
                return

    def _abandon(self, fill: _Fill) -> None:
        """Give the claim up in the background (also when this request was cancelled); if that fails, the claim's
        lease ends it."""
        async def abandon() -> None:
            try:
                await self.store.abandon(fill.account, fill.gateway, fill.key, fill.fill_id)
            except Exception as exc:
                log.warning("could not give up a cache claim (its lease will end it): %s", exc)

        task = asyncio.get_running_loop().create_task(abandon())
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)


class _Fill:
    """The claim a leading request holds, and how its answer is to be stored."""

    __slots__ = ("account", "fill_id", "gateway", "key", "max_bytes", "ttl")

    def __init__(self, account: str, gateway: str, key: bytes, fill_id: uuid.UUID, ttl: int, max_bytes: int) -> None:
        self.account, self.gateway, self.key = account, gateway, key
        self.fill_id, self.ttl, self.max_bytes = fill_id, ttl, max_bytes


class _Capture:
    """The answer as it goes to the client, kept up to `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.too_large = False
        self.complete = False

    def see(self, message: Message) -> None:
        if self.limit <= 0:
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in message.get("headers", [])
                            if n.decode("latin-1").lower() in REPLAYED_HEADERS]
        elif message["type"] == "http.response.body" and not self.too_large:
            chunk = message.get("body", b"")
            if len(self.body) + len(chunk) > self.limit:
                self.too_large = True
                self.body.clear()
            else:
                self.body += chunk
            self.complete = not message.get("more_body", False)

    def entry(self, ex: Exchange) -> Entry | None:
        """The answer to store, or None: not 2xx, not whole, an error on the way, a stream that did not end with
        its final usage (cut, or the client left), or too large."""
        call = ex.call
        if not 200 <= self.status < 300 or not self.complete or self.too_large or ex.error is not None:
            return None
        if call is not None and call.stream and ex.usage_estimated:
            return None
        cost = None if ex.cost_usd is None else to_nano(ex.cost_usd)
        return Entry(self.status, tuple(self.headers), bytes(self.body), cost)


def _is_stream(entry: Entry) -> bool:
    return any(name == "content-type" and value.startswith("text/event-stream") for name, value in entry.headers)


def _identity_of(ex: Exchange) -> str | None:
    identity = ex.identity
    if identity is None:
        return None
    if identity.user_id:
        return f"user:{identity.user_id}"
    if identity.service_token:
        return f"service:{identity.service_token}"
    return None
