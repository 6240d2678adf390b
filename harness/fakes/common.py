"""Shared machinery of the fake providers: recording, deterministic replies and usage, header-driven behaviour, SSE.

Deterministic content. The reply is `reply_text(fmt, prompt)`: "Hello from fake-<fmt>: " followed by the last six
words of the prompt text. Usage (`Usage`, canonical, Anthropic-style: `input` excludes cached tokens):
input = `count_words(prompt)`, output = words of the reply, cache_read = cache_write = 0, unless the request sends
`x-fake-usage: {"input":..,"output":..,"cache_read":..,"cache_write":..}` (any subset). `expected_usage(kind, body)`
and `expected_reply(kind, body)` compute what a fake answers to a request body.

Per-request behaviour, by request header (see `Behaviour`):
- `x-fake-status: 429|500|503|...` answer that status with the provider's error body
- `x-fake-retry-after: S` add `retry-after: S` to error answers
- `x-fake-delay-ms: N` sleep N ms before the first byte (errors included)
- `x-fake-chunk-delay-ms: N` sleep N ms after each streamed event / chunk
- `x-fake-cut-after: N` drop the connection after N SSE events (or body chunks), without the closing events;
  on a JSON answer the body is one chunk, so N=0 drops the connection right after the status line and headers
- `x-fake-fail-times: N` with `x-fake-key: k` answer 503 to the first N requests carrying key k, then succeed;
  `x-fake-fail-status: S` makes those failures answer S instead of 503
- `x-fake-only-model: m` the failure behaviours (status, delay, fail-times) apply only to requests for model m
  (the body's `model`, or the model in a Gemini path); requests for other models are served normally
- `x-fake-raw-usage: {...}` the usage object as the provider documents it, verbatim (OpenAI `usage`, Anthropic
  `usage` — `message_start` gets it with `output_tokens: 1`, `message_delta` whole —, Gemini `usageMetadata`);
  `x-fake-extra: {...}` fields merged into the answer (every chunk of an OpenAI stream, the last Gemini chunk, the
  Responses `response`); `x-fake-end-event: response.incomplete` the Responses stream's last event;
  `x-fake-groq-usage: 1` a stream's usage only in the finish chunk's `x_groq.usage`
- `x-fake-output-bytes: N` about N extra bytes: JSON answers get a leading `"padding"` field, streams get extra
  text deltas of "x"; sent in 64 KiB chunks; the usage is not changed
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

CHUNK = 65536
ErrorBody = Callable[[int, str], dict[str, Any]]

# Which request fields hold the prompt, per request kind.
PROMPT_FIELDS: dict[str, tuple[str, ...]] = {
    "openai": ("messages",),
    "openai-responses": ("instructions", "input"),
    "openai-embeddings": ("input",),
    "anthropic": ("system", "messages"),
    "gemini": ("systemInstruction", "contents"),
}
_TEXT_KEYS = ("system", "instructions", "systemInstruction", "messages", "contents", "input", "content", "parts",
              "text")


# -- recording ----------------------------------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lowercased names
    json: Any  # parsed body (None when empty or not JSON)
    key: str | None  # the API key the request authenticated with
    raw: bytes = b""

    @property
    def body(self) -> Any:
        return self.json


@dataclass(frozen=True)
class Seen:
    """Any request that reached the fake, routed or not: what a gateway key could have been sent to."""

    method: str
    path: str  # as sent on the wire (raw, percent-encoding kept)
    headers: dict[str, str]  # lowercased names


@dataclass
class Recorder:
    """Requests received by one fake app, oldest first (`app.state.recorder`, also `app.state.requests`).
    `seen` holds every request that reached the app, including those no route matched."""

    requests: list[Recorded] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seen: list[Seen] = field(default_factory=list)

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    @property
    def keys(self) -> list[str | None]:
        return [r.key for r in self.requests]

    def clear(self) -> None:
        self.requests.clear()
        self.failures.clear()
        self.seen.clear()


class FakeApp(Starlette):
    """A Starlette app that records requests and can drop its connections mid-stream."""

    def __init__(self, routes: list[Route]) -> None:
        super().__init__(routes=routes)
        self.recorder = Recorder()
        self.state.recorder = self.recorder
        self.state.requests = self.recorder.requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            self.recorder.seen.append(Seen(scope["method"], raw.decode("latin-1"),
                                           {k.decode("latin-1").lower(): v.decode("latin-1")
                                            for k, v in scope["headers"]}))
            # uvicorn passes a bound method of its request cycle; its transport lets `cut` close the socket cleanly
            scope["fake.transport"] = getattr(getattr(send, "__self__", None), "transport", None)
        await super().__call__(scope, receive, send)


# -- deterministic content ----------------------------------------------------------------------------------------


def texts(value: Any) -> list[str]:
    """Every prompt text in a request fragment (strings, content blocks, parts, messages...)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for item in value for t in texts(item)]
    if isinstance(value, dict):
        return [t for key in _TEXT_KEYS if key in value for t in texts(value[key])]
    return []


def count_words(value: Any) -> int:
    """Whitespace-separated words in every text of `value`: the fakes' input token count."""
    return sum(len(t.split()) for t in texts(value))


def reply_text(fmt: str, prompt: Any) -> str:
    """The fakes' reply to a prompt: "Hello from fake-<fmt>: <last six words of the prompt>"."""
    words = " ".join(texts(prompt)).split()[-6:]
    return f"Hello from fake-{fmt}: " + " ".join(words)


def prompt_of(kind: str, body: dict[str, Any]) -> list[Any]:
    return [body.get(name) for name in PROMPT_FIELDS[kind]]


def last_text(items: Any) -> str:
    """Text of the last message / content of a list (where the tool trigger word "weather" is looked for)."""
    return " ".join(texts(items[-1:])) if isinstance(items, list) else " ".join(texts(items))


@dataclass(frozen=True)
class Usage:
    """Canonical usage. `input` excludes cached tokens; each format maps it to its own fields."""

    input: int
    output: int
    cache_read: int = 0
    cache_write: int = 0


def make_usage(prompt: Any, reply: str, forced: dict[str, int] | None = None) -> Usage:
    values = {"input": count_words(prompt), "output": len(reply.split()), "cache_read": 0, "cache_write": 0}
    values.update(forced or {})
    return Usage(**values)


def expected_reply(kind: str, body: dict[str, Any]) -> str:
    """The reply text a fake sends for `body`; kind is a key of PROMPT_FIELDS."""
    return reply_text(kind.split("-")[0], prompt_of(kind, body))


def expected_usage(kind: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Usage:
    """The canonical usage a fake reports for `body` (and the `x-fake-usage` header, if any)."""
    forced = (headers or {}).get("x-fake-usage")
    return make_usage(prompt_of(kind, body), expected_reply(kind, body), json.loads(forced) if forced else None)


# -- behaviour ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """What the request's `x-fake-*` headers ask for."""

    status: int = 0
    retry_after: str | None = None
    delay_ms: int = 0
    chunk_delay_ms: int = 0
    cut_after: int | None = None
    fail_times: int = 0
    fail_key: str | None = None
    fail_status: int = 503
    only_model: str | None = None
    output_bytes: int = 0
    usage: dict[str, int] | None = None
    raw_usage: dict[str, Any] | None = None  # x-fake-raw-usage: the usage object, verbatim, in the provider's shape
    extra: dict[str, Any] | None = None  # x-fake-extra: fields merged into the answer (its last chunk when streamed)
    end_event: str | None = None  # x-fake-end-event: the Responses stream's last event (response.incomplete...)
    groq_usage: bool = False  # x-fake-groq-usage: stream usage only in the finish chunk's x_groq.usage

    @classmethod
    def from_headers(cls, headers: Any) -> Behaviour:
        def num(name: str) -> int:
            return int(headers.get(name) or 0)

        cut = headers.get("x-fake-cut-after")
        forced = json.loads(headers.get("x-fake-usage") or "null")
        if forced is not None and not (isinstance(forced, dict) and set(forced) <= set(Usage.__dataclass_fields__)):
            raise ValueError(f"x-fake-usage takes an object with keys {sorted(Usage.__dataclass_fields__)}")
        return cls(status=num("x-fake-status"), retry_after=headers.get("x-fake-retry-after"),
                   delay_ms=num("x-fake-delay-ms"), chunk_delay_ms=num("x-fake-chunk-delay-ms"),
                   cut_after=int(cut) if cut not in (None, "") else None, fail_times=num("x-fake-fail-times"),
                   fail_key=headers.get("x-fake-key"), fail_status=num("x-fake-fail-status") or 503,
                   only_model=headers.get("x-fake-only-model") or None, output_bytes=num("x-fake-output-bytes"),
                   usage=forced, raw_usage=_object(headers, "x-fake-raw-usage"), extra=_object(headers, "x-fake-extra"),
                   end_event=headers.get("x-fake-end-event") or None, groq_usage=bool(headers.get("x-fake-groq-usage")))


def _object(headers: Any, name: str) -> dict[str, Any] | None:
    value = json.loads(headers.get(name) or "null")
    if value is not None and not isinstance(value, dict):
        raise ValueError(f"{name} takes a JSON object")
    return value


def error_response(error: ErrorBody, status: int, message: str, behaviour: Behaviour | None = None) -> JSONResponse:
    headers = {"retry-after": behaviour.retry_after} if behaviour and behaviour.retry_after else None
    return JSONResponse(error(status, message), status, headers=headers)


async def admit(request: Request, recorder: Recorder, key: str | None,
                error: ErrorBody) -> tuple[dict[str, Any], Behaviour, Response | None]:
    """Record the request, then apply delay, auth, forced failures. Returns (body, behaviour, refusal or None)."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    recorder.requests.append(Recorded(request.method, request.url.path, request.url.query,
                                      {k.lower(): v for k, v in request.headers.items()}, body, key, raw))
    try:
        behaviour = Behaviour.from_headers(request.headers)
    except ValueError as exc:
        return {}, Behaviour(), error_response(error, 400, f"bad x-fake header: {exc}")
    if behaviour.only_model is not None and _model_of(request, body) != behaviour.only_model:
        behaviour = replace(behaviour, status=0, delay_ms=0, fail_times=0)
    if behaviour.delay_ms:
        await asyncio.sleep(behaviour.delay_ms / 1000)
    if not key:
        return {}, behaviour, error_response(error, 401, "missing or invalid API key")
    if not isinstance(body, dict):
        return {}, behaviour, error_response(error, 400, "request body must be a JSON object")
    if behaviour.fail_key and recorder.failures[behaviour.fail_key] < behaviour.fail_times:
        recorder.failures[behaviour.fail_key] += 1
        return body, behaviour, error_response(error, behaviour.fail_status, "overloaded, try again", behaviour)
    if behaviour.status >= 400:
        return body, behaviour, error_response(error, behaviour.status, f"fake error {behaviour.status}", behaviour)
    return body, behaviour, None


def _model_of(request: Request, body: Any) -> str | None:
    model = body.get("model") if isinstance(body, dict) else None
    if isinstance(model, str):
        return model
    target = request.path_params.get("target")  # Gemini: /v1beta/models/{model}:{verb}
    return str(target).partition(":")[0] if target else None


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


# -- streaming ----------------------------------------------------------------------------------------------------


class FakeCut(ConnectionResetError):
    """Raised to make the server drop a connection when its transport is not reachable."""


async def _drop_connection(scope: Scope) -> None:
    transport = scope.get("fake.transport")
    if transport is None:
        raise FakeCut("x-fake-cut-after")  # uvicorn logs it and closes the connection
    for _ in range(200):  # let what was already sent reach the client
        if not transport.get_write_buffer_size():
            break
        await asyncio.sleep(0.005)
    transport.abort()
    await asyncio.sleep(0)


def stream(request: Request, behaviour: Behaviour, chunks: Iterable[bytes],
           media_type: str = "text/event-stream") -> StreamingResponse:
    """Send `chunks` (SSE events or body pieces) one by one, honouring cut-after and chunk-delay."""

    async def body() -> AsyncIterator[bytes]:
        for i, chunk in enumerate(chunks):
            if behaviour.cut_after is not None and i >= behaviour.cut_after:
                await _drop_connection(request.scope)
                return
            yield chunk
            await asyncio.sleep(behaviour.chunk_delay_ms / 1000)

    headers = {"cache-control": "no-cache"} if media_type == "text/event-stream" else None
    return StreamingResponse(body(), media_type=media_type, headers=headers)


def json_answer(request: Request, behaviour: Behaviour, payload: dict[str, Any]) -> Response:
    """A JSON answer; with x-fake-output-bytes, streamed in chunks behind a leading "padding" field."""
    if not behaviour.output_bytes and behaviour.cut_after is None:
        return JSONResponse(payload)
    return stream(request, behaviour, _padded(payload, behaviour.output_bytes), "application/json")


def _padded(payload: dict[str, Any], size: int) -> Iterator[bytes]:
    rest = json.dumps(payload)[1:]
    if not size:
        yield b"{" + rest.encode()
        return
    yield b'{"padding": "'
    for piece in padding(size):
        yield piece.encode()
    yield b'"' + (b", " if rest != "}" else b"") + rest.encode()


def padding(size: int) -> Iterator[str]:
    """`size` bytes of "x", in 64 KiB pieces."""
    while size > 0:
        yield "x" * min(CHUNK, size)
        size -= CHUNK


def sse_data(data: Any, sep: str = "\n\n") -> bytes:
    return f"data: {json.dumps(data)}{sep}".encode()


def sse_event(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def word_pieces(text: str) -> list[str]:
    """Split text into stream deltas that concatenate back to exactly `text`."""
    words = text.split(" ")
    return [words[0], *(" " + w for w in words[1:])]
