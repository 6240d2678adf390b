"""The unified endpoint `/compat/chat/completions`: OpenAI chat format in and out, for every provider.

`model` is `{provider}/{model}`. OpenAI-format providers get the body with the bare model name; Anthropic and
Gemini get a translated body (gateway/providers/compat.py) and their answers — JSON, SSE and errors — come back
in OpenAI's shapes. Usage is read from the provider's own events by the same adapters as the native routes, so
the cost of a compat call is computed exactly like a direct one.

Keys: the SDK's `Authorization: Bearer <key>` is the provider key (pass-through); without it, a stored key or
unified billing applies as on the native routes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
from starlette.types import Scope, Send

from gateway.errors import (
    CompatError,
    CompatUpstreamError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    UpstreamBroke,
    UpstreamFailure,
    UpstreamNotJSON,
    to_response,
)
from gateway.exchange import Call, Exchange, Usage
from gateway.gateways import Gateway
from gateway.providers.call import off_loop, parse_call
from gateway.providers.compat import (
    SSE_DONE,
    AnthropicStream,
    GeminiStream,
    error_from_provider,
    from_anthropic_response,
    from_gemini_response,
    openai_error,
    sse_chunk,
    to_anthropic_request,
    to_gemini_request,
)
from gateway.providers.forward import response_headers
from gateway.providers.left_early import count_delivered
from gateway.providers.openai import dumps
from gateway.providers.options import RequestOptions
from gateway.providers.router import reported
from gateway.providers.sse import SSEParser
from gateway.providers.store import ProviderConfigSnapshot
from gateway.providers.target import Target, resolve
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.providers.router import ProviderRouter

MAX_COMPAT_RESPONSE = 32 * 1024 * 1024


def split_model(value: Any) -> tuple[str, str]:
    if not isinstance(value, str) or "/" not in value:
        raise InvalidRequest('model must be "{provider}/{model}", e.g. "anthropic/claude-sonnet-4-5"')
    provider, _, model = value.partition("/")
    if not provider or not model:
        raise InvalidRequest('model must be "{provider}/{model}"')
    return provider, model


def compat_target(ex: Exchange, gateway: Gateway, settings: Settings, config: ProviderConfigSnapshot, method: str,
                  rest: str, headers: dict[str, str], body: Any, options: RequestOptions,
                  limits: tuple[int, bool]) -> Target:
    """Parse the compat call (ex.call: the provider's upstream endpoint, the Chat Completions body with its output
    limit resolved) and resolve its target. `limits`: the gateway's (default_max_output_tokens, inject_max_tokens)."""
    if rest != "chat/completions":
        raise NotFound("the compat endpoint is /compat/chat/completions")
    if method != "POST":
        raise MethodNotAllowed(method, f"the compat endpoint answers POST, not {method}")
    if ex.json_error is not None:
        raise ex.json_error
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    provider, model = split_model(body.get("model"))
    stream = body.get("stream") is True
    if provider == "anthropic":
        path, query = "v1/messages", ""
    elif provider == "google-ai-studio":
        verb = "streamGenerateContent" if stream else "generateContent"
        path, query = f"v1beta/models/{model}:{verb}", "alt=sse" if stream else ""
    elif provider == "grok":
        path, query = "v1/chat/completions", ""
    else:
        path, query = "chat/completions", ""
    ex.call = parse_call(method="POST", provider=provider, path=path, query=query, body=body, raw_body=b"",
                         default_output=limits[0], inject_limit=limits[1], compat=True, model=model,
                         input_bound=ex.input_bound)
    if ex.call.endpoint is None:
        raise InvalidRequest(f"model {model!r} cannot be served by {provider} through the compat endpoint")
    scheme, _, token = headers.get("authorization", "").partition(" ")
    client_key = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return resolve(exchange=ex, gateway=gateway, settings=settings, config=config, call=ex.call, headers=headers,
                   options=options, client_key=client_key)


def upstream_body(target: Target, call: Call) -> tuple[Any, bool]:
    """(body for the provider, hide the usage chunk): the call's body, translated, with its resolved limit."""
    assert target.model is not None
    body = call.body
    if target.provider == "anthropic":
        assert call.output_limit is not None
        return to_anthropic_request(body, target.model, call.output_limit), False
    if target.provider == "google-ai-studio":
        return to_gemini_request(body, call.output_limit if call.limit_field else None), False
    return target.adapter.prepare(target.path, {**body, "model": target.model}, target.stream)


def translated(target: Target, call: Call) -> tuple[Any, bool]:
    """The translation, with any shape it cannot read (a tool call that is not an object...) a CompatError."""
    try:
        return upstream_body(target, call)
    except CompatError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        raise CompatError(f"the request's messages or tools have an unexpected shape ({type(exc).__name__})",
                          "messages") from None


async def serve_compat(router: ProviderRouter, scope: Scope, send: Send, ex: Exchange, target: Target) -> None:
    call = ex.call
    assert call is not None
    try:
        payload, hide = await off_loop(len(ex.decoded_body or b""), lambda: translated(target, call))
    except CompatError as exc:
        status = to_response(exc).status
        error = openai_error(status, str(exc), "invalid_request_error")
        error["error"]["param"] = exc.param
        await _send_json(send, status, error)
        ex.status_code, ex.error = status, str(exc)
        return
    try:
        content = await off_loop(len(ex.decoded_body or b""), lambda: dumps(payload))
        response = await router.open(scope, ex, target, content)
    except UpstreamFailure as exc:
        await router.refuse(send, ex, exc, target)
        router.bill_unanswered(ex, target, exc.sent)
        return
    try:
        if response.status_code >= 400:
            raw = await _read(response)
            passthrough = raw if target.adapter.name not in ("anthropic", "google-ai-studio") else None
            ex.error = f"{target.provider} answered {response.status_code}"
            if passthrough is not None:
                await _send_raw(send, response.status_code, passthrough, router.gateway_headers(ex, target))
            else:
                await _send_json(send, response.status_code,
                                 error_from_provider(target.provider, response.status_code, raw),
                                 router.gateway_headers(ex, target))
            return
        if target.stream:
            await _stream(router, send, ex, target, response, hide)
        else:
            await _json(router, send, ex, target, response)
    except httpx.HTTPError as exc:
        # Only `_read` lets one out (`_stream` ends the stream itself), so nothing was sent yet: a 502 naming the
        # provider rather than a 500. `ex.status_code` keeps the provider's status, as in ProviderRouter._relay: a
        # 2xx answer that broke is billed what the gateway saw of it, estimated.
        message = f"{target.provider} broke the connection before its answer was complete: {type(exc).__name__}"
        await router.refuse(send, ex, UpstreamBroke(target.provider, message), target)
        ex.status_code = response.status_code
        router.record_cost(ex, target, Usage(), complete=False)
    finally:
        await response.aclose()


async def _read(response: Any) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_raw():
        data += chunk
        if len(data) > MAX_COMPAT_RESPONSE:
            break
    return bytes(data)


async def _json(router: ProviderRouter, send: Send, ex: Exchange, target: Target, response: Any) -> None:
    raw = await _read(response)
    try:
        data = json.loads(raw)
    except ValueError:
        answer = to_response(UpstreamNotJSON(target.provider))
        await _send_json(send, answer.status, openai_error(answer.status, answer.message))
        ex.status_code = answer.status
        return
    usage = target.adapter.usage_from_json(target.path, data)
    router.record_cost(ex, target, usage, complete=reported(usage))
    assert target.model is not None
    if target.provider == "anthropic":
        out = from_anthropic_response(data, target.model)
    elif target.provider == "google-ai-studio":
        out = from_gemini_response(data, target.model)
    else:
        out = data
    headers = router.gateway_headers(ex, target)
    if ex.cost_usd is not None:
        headers.append((b"cf-aig-cost", format(ex.cost_usd.normalize(), "f").encode()))
    encoded = json.dumps(out).encode()
    ex.response_size = len(encoded)
    ex.response_body = encoded
    await _send_raw(send, response.status_code, encoded, headers)


async def _stream(router: ProviderRouter, send: Send, ex: Exchange, target: Target, response: Any, hide: bool) -> None:
    assert target.model is not None
    assert ex.call is not None
    options = ex.call.body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    translator: AnthropicStream | GeminiStream | None = None
    if target.provider == "anthropic":
        translator = AnthropicStream(target.model, include_usage)
    elif target.provider == "google-ai-studio":
        translator = GeminiStream(target.model, include_usage)
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    if translator is None:
        headers = [h for h in response_headers(response) if h[0] != b"content-length"]
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": headers + router.gateway_headers(ex, target)})
    parser = SSEParser()
    reader = target.adapter.stream_usage(target.path, hide)
    size = 0

    async def emit(data: bytes) -> None:
        nonlocal size
        size += len(data)
        await send({"type": "http.response.body", "body": data, "more_body": True})

    try:
        async for chunk in response.aiter_raw():
            out = bytearray()
            for event in parser.feed(chunk):
                hidden = reader.on_event(event)
                count_delivered(ex, event.data)
                if translator is None:
                    if not hidden:
                        out += event.raw
                    continue
                data = event.json()
                if not isinstance(data, dict):
                    continue
                chunks = (translator.feed(event.event, data) if isinstance(translator, AnthropicStream)
                          else translator.feed(data))
                for item in chunks:
                    out += sse_chunk(item)
            ex.answer_finished = reader.final or getattr(reader, "finished", False)
            if out:
                await emit(bytes(out))
        if translator is not None:
            tail = b"".join(sse_chunk(item) for item in translator.finish())
            await emit(tail + SSE_DONE)
    except CompatUpstreamError as exc:  # after the first byte: the stream ends with the error as its last chunk
        ex.error = str(exc)
        await emit(sse_chunk(openai_error(to_response(exc).status, str(exc))))
    except Exception as exc:  # a broken upstream stream: the client's stream just ends
        import httpx

        if not isinstance(exc, httpx.HTTPError):
            raise
        ex.error = f"{target.provider} stream broke: {type(exc).__name__}"
    finally:
        ex.response_size = size
        router.record_cost(ex, target, reader.usage, complete=reader.final)
    await send({"type": "http.response.body", "body": b""})


async def _send_json(send: Send, status: int, payload: dict[str, Any],
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await _send_raw(send, status, json.dumps(payload).encode(), extra)


async def _send_raw(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})
