"""Guardrails: the gateway's `guardrails` setting applied to the prompt before anything else reads it, and to the
answer as it goes back (gateway/guardrails/: local detectors, no remote model, nothing leaves the process).

The prompt. The body is read once (gateway/providers/call.py `read_json`, the same parse every later layer
reads) and every text string of it is checked (gateway/guardrails/payload.py). Then:
- a `block` category found: 400 `{"success": false, "error": {"code": 2016, "message": "Prompt blocked due to
  security configurations", "categories": [...]}}`; nothing is reserved or forwarded;
- `redact` categories found: the parsed body itself is rewritten, and its input bound measured again, before the
  canonical call is built from it, so that the spend estimate, a fallback's re-parse, the cache key and the
  forwarder all read the redacted call (on an endpoint the gateway forwards as raw bytes, the bytes become the
  redacted JSON);
- a body that is not JSON cannot be rewritten faithfully: a `redact` finding there refuses it like `block`.

The answer. JSON answers are read whole, checked and rewritten (or replaced by a 400 with code 2017: the provider
answered, so the call is billed; the text is not delivered). Streams (SSE, each provider's format) go through
gateway/guardrails/sse.py: each channel's text is held back only as far as a match could still grow, matches split
across events are found, and a `block` finding ends the stream with an error event carrying code 2017. Other
answers (audio, images) carry no text and pass as they are. A flag-only side never holds anything back.

The log row names each category found and the action applied (`Exchange.guardrails`), never the text; the bodies
the log keeps have every finding replaced, flagged ones included.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import PromptBlocked, RequestRefused, ResponseBlocked, to_response
from gateway.exchange import Exchange, GuardrailOutcome
from gateway.gateways import GatewayStore
from gateway.guardrails import policy
from gateway.guardrails.payload import redact_json
from gateway.guardrails.policy import SidePolicy
from gateway.guardrails.scanner import redact
from gateway.guardrails.sse import StreamRedactor
from gateway.paths import locate
from gateway.providers.call import MAX_DEPTH, off_loop, read_json, recognise
from gateway.providers.estimate import input_token_bound

MAX_INSPECTED_ANSWER = 32 * 1024 * 1024  # a JSON answer past this is not delivered when it must be checked
MAX_LOGGED = 1024 * 1024  # what the log keeps of a body (gateway/middleware/request_log.py)


class Guardrails:
    """`gateways` finds the gateway's settings when no outer layer did (this layer alone in front of an app)."""

    def __init__(self, app: ASGIApp, *, gateways: GatewayStore | None = None, max_body_bytes: int) -> None:
        self.app = app
        self.gateways = gateways
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ex = Exchange.of(scope)
        setting = await self._setting(scope, ex)
        prompt, answer = policy.side(setting, "prompt"), policy.side(setting, "response")
        if prompt is None and answer is None:
            await self.app(scope, receive, send)
            return
        ex.guardrails = ex.guardrails or GuardrailOutcome()
        if prompt is not None:
            blocked = await self._check_prompt(scope, receive, ex, prompt)
            if blocked is not None:
                response = to_response(blocked)
                ex.status_code, ex.error = response.status, response.message
                await response.render()(scope, receive, send)
                return
        if answer is not None:
            send = _AnswerGuard(send, ex, answer).send
        await self.app(scope, receive, send)

    async def _setting(self, scope: Scope, ex: Exchange) -> dict[str, Any] | None:
        gateway = ex.gateway
        if gateway is None and self.gateways is not None:
            where = locate(scope)
            if where is not None and where.account:
                try:
                    gateway = ex.gateway = await self.gateways.get(where.account, where.gateway)
                except RequestRefused:
                    return None  # unknown account or gateway: the router answers 404
        return gateway.settings.guardrails if gateway is not None else None

    async def _check_prompt(self, scope: Scope, receive: Receive, ex: Exchange,
                            side: SidePolicy) -> PromptBlocked | None:
        encoding = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"content-encoding"), None)
        try:
            body = await read_json(ex, receive, encoding, self.max_body_bytes)
        except RequestRefused:
            return None  # the router answers with the same refusal (kept on the Exchange); nothing is forwarded
        assert ex.guardrails is not None
        size = len(ex.decoded_body or b"")
        if ex.json_error is not None or body is None:
            text = (ex.decoded_body or b"").decode("utf-8", "replace")
            logged, seen = await off_loop(size, lambda: redact(text, side.log_rules()))
            if not seen:
                return None
            ex.guardrails.prompt = side.applied(seen)
            ex.guardrails.logged_request = logged.encode()
            refused = sorted(c for c in seen if side.action(c) != "flag")
            if refused:  # bytes the gateway does not understand cannot be rewritten faithfully
                for category in refused:
                    ex.guardrails.prompt[category] = "block"
                return PromptBlocked(refused)
            return None
        found: dict[str, int] = {}
        redacted = await off_loop(size, lambda: redact_json(body, side.rules(stop=False), found))
        where = locate(scope)
        raw_forwarded = where is not None and where.provider != "compat" and \
            recognise(where.provider, scope["method"], where.rest)[0] is None
        if raw_forwarded:
            # an endpoint the gateway does not understand is forwarded as bytes: the bytes must be what was checked
            # (a key sent twice is one value to the parser and another to the provider), so they are the parsed
            # body, encoded again
            ex.decoded_body = await off_loop(size, lambda: encode_json(redacted))
        if not found:
            return None
        ex.guardrails.prompt = side.applied(found)
        flagged = any(side.action(c) == "flag" for c in found)
        logged = await off_loop(size, lambda: redact_json(body, side.log_rules(), {})) if flagged else redacted
        ex.guardrails.logged_request = orjson.dumps(logged)
        blocked = sorted(c for c in found if side.action(c) == "block")
        if blocked:
            return PromptBlocked(blocked)
        if redacted is not body:
            ex.json_body = redacted
            ex.input_bound = await off_loop(size, lambda: input_token_bound(redacted, MAX_DEPTH))
        return None


def encode_json(value: Any) -> bytes:
    """Compact JSON; the standard library for an integer past 64 bits, which orjson cannot encode."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class _AnswerGuard:
    """One request's answer, checked on its way to the client (a fresh one per request)."""

    def __init__(self, send: Send, ex: Exchange, side: SidePolicy) -> None:
        self.downstream = send
        self.ex = ex
        self.side = side
        self.mode = "pass"
        self.start: Message | None = None
        self.held = bytearray()
        self.too_large = False
        self.stream: StreamRedactor | None = None  # what the client is sent (None: flag only, sent as it came)
        self.logged: StreamRedactor | None = None  # what the log keeps
        self.log_copy = bytearray()
        self.done = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            await self._start(message)
        elif message["type"] == "http.response.body" and self.mode == "json":
            await self._json_part(message)
        elif message["type"] == "http.response.body" and self.mode == "sse":
            await self._sse_part(message)
        elif message["type"] == "http.response.body" and self.mode == "drain":
            return  # the rest of an answer that was refused
        else:
            await self.downstream(message)

    async def _start(self, message: Message) -> None:
        content_type = MutableHeaders(scope=message).get("content-type", "")
        if "text/event-stream" in content_type:
            self.mode = "sse"
            if self.side.rewrites:
                self.stream = StreamRedactor(self.side.rules())
            if self.stream is None or any(a == "flag" for _, a in self.side.actions):
                self.logged = StreamRedactor(self.side.log_rules())
            await self.downstream(message)
        elif "json" in content_type:
            self.mode = "json"
            self.start = message
        else:
            await self.downstream(message)

    # -- JSON answers ----------------------------------------------------------------------------------------

    async def _json_part(self, message: Message) -> None:
        if self.done:
            return
        self.held += message.get("body", b"")
        if len(self.held) > MAX_INSPECTED_ANSWER:
            self.too_large = True
        if message.get("more_body", False) and not self.too_large:
            return
        self.done = True
        await self._answer_json(bytes(self.held))
        if message.get("more_body", False):  # past the bound: the rest is not read into memory
            self.mode = "drain"

    async def _answer_json(self, raw: bytes) -> None:
        assert self.start is not None and self.ex.guardrails is not None
        side = self.side
        if self.too_large:
            if side.rewrites:
                await self._refuse([], "the answer is too large to check")
                return
            await self._send_start(self.start, len(raw))
            await self.downstream({"type": "http.response.body", "body": raw, "more_body": False})
            return
        found: dict[str, int] = {}
        try:
            data = json.loads(raw)
        except ValueError:
            text, found = await off_loop(len(raw), lambda: redact(raw.decode("utf-8", "replace"),
                                                                  side.rules(stop=False)))
            out: bytes = text.encode() if found else raw
            logged: Any = None
        else:
            redacted = await off_loop(len(raw), lambda: redact_json(data, side.rules(stop=False), found))
            out = json.dumps(redacted, ensure_ascii=False).encode() if redacted is not data else raw
            logged = data
        if found:
            self.ex.guardrails.response = side.applied(found)
            blocked = sorted(c for c in found if side.action(c) == "block")
            if blocked:
                await self._refuse(blocked, None)
                return
            if any(side.action(c) == "flag" for c in found):
                copy = redact_json(logged, side.log_rules(), {}) if logged is not None else \
                    redact(raw.decode("utf-8", "replace"), side.log_rules())[0]
                self.ex.response_body = copy.encode() if isinstance(copy, str) else json.dumps(copy).encode()
            else:
                self.ex.response_body = out
        await self._send_start(self.start, len(out))
        await self.downstream({"type": "http.response.body", "body": out, "more_body": False})

    async def _send_start(self, start: Message, length: int) -> None:
        headers = MutableHeaders(scope=start)
        if "content-length" in headers:
            headers["content-length"] = str(length)
        await self.downstream(start)

    async def _refuse(self, categories: list[str], why: str | None) -> None:
        """The answer is not delivered: the client gets code 2017 (the call is billed as answered)."""
        assert self.start is not None
        answer = to_response(ResponseBlocked(categories))
        self.ex.error = answer.message if why is None else f"{answer.message}: {why}"
        body = json.dumps(answer.body).encode()
        self.ex.response_body = body
        kept = [(k, v) for k, v in self.start.get("headers", []) if k.lower().startswith(b"cf-aig-")]
        await self.downstream({"type": "http.response.start", "status": answer.status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *kept]})
        await self.downstream({"type": "http.response.body", "body": body, "more_body": False})

    # -- streams -------------------------------------------------------------------------------------------------

    async def _sse_part(self, message: Message) -> None:
        chunk: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        if self.done:  # ended at a blocked match: the rest of the provider's stream goes nowhere
            return
        if self.logged is not None:
            copy = self.logged.feed(chunk) + (b"" if more else self.logged.finish())
            if len(self.log_copy) < MAX_LOGGED:
                self.log_copy += copy[:MAX_LOGGED - len(self.log_copy)]
        out = chunk
        if self.stream is not None:
            out = self.stream.feed(chunk) + (b"" if more else self.stream.finish())
        self._record(more)
        if self.stream is not None and self.stream.stopped is not None:
            self.done = True
            self.ex.error = "Response blocked due to security configurations"
            await self.downstream({"type": "http.response.body", "body": out, "more_body": False})
            return
        if out or not more:
            await self.downstream({"type": "http.response.body", "body": out, "more_body": more})

    def _record(self, more: bool) -> None:
        assert self.ex.guardrails is not None
        found: set[str] = set()
        for redactor in (self.stream, self.logged):
            if redactor is not None:
                found |= redactor.found
        if found:
            self.ex.guardrails.response = self.side.applied(found)
            if self.logged is not None and (not more or self.stream is None or self.stream.stopped is not None):
                self.ex.response_body = bytes(self.log_copy)
