"""Fake OpenAI-format, Anthropic and Gemini servers speaking the real wire formats (JSON, SSE, errors).

Deterministic: the reply is "Hello from fake-<format>: <first words of the last user message>". Usage:
input tokens = words in every text of the request (`count_words`), output tokens = words of the reply,
unless the request forces them with `x-fake-usage: {"input":..,"output":..,"cache_read":..,"cache_write":..}`.

Per-request behaviour, by request header (the gateway forwards these):
- `x-fake-status: 429|500|503|400` answer that status with the provider's error body
- `x-fake-delay-ms: N` sleep before the first byte
- `x-fake-cut-after: N` (streams) drop the connection after N events, without the closing events
- `x-fake-fail-times: N` with `x-fake-key: k` answer 503 to the first N requests carrying key k
- `x-fake-output-bytes: N` a JSON body of about N bytes (streamed in 64 KiB chunks; usage at the end)
Every request is recorded in `app.state.recorder.requests` (method, path, query, headers, json, key).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    json: Any
    key: str | None


@dataclass
class Recorder:
    requests: list[Recorded] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def last(self) -> Recorded:
        return self.requests[-1]


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [t for item in value for t in _texts(item)]
    if isinstance(value, dict):
        out = []
        for key in ("content", "text", "parts", "messages", "system", "contents", "systemInstruction", "input"):
            if key in value:
                out += _texts(value[key])
        return out
    return []


def count_words(body: Any) -> int:
    return sum(len(t.split()) for t in _texts(body))


def reply_text(fmt: str, body: Any) -> str:
    words = " ".join(_texts(body)).split()[-6:]
    return f"Hello from fake-{fmt}: " + " ".join(words)


def forced_usage(request: Request, body: Any, reply: str) -> dict[str, int]:
    usage = {"input": count_words(body), "output": len(reply.split()), "cache_read": 0, "cache_write": 0}
    if "x-fake-usage" in request.headers:
        usage.update(json.loads(request.headers["x-fake-usage"]))
    return usage


async def _prelude(request: Request, recorder: Recorder, key: str | None, error: Any) -> tuple[Any, Response | None]:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    recorder.requests.append(Recorded(request.method, request.url.path, request.url.query,
                                      {k.lower(): v for k, v in request.headers.items()}, body, key))
    if not key:
        return body, JSONResponse(error(401, "missing API key"), 401)
    delay = int(request.headers.get("x-fake-delay-ms", "0"))
    if delay:
        await asyncio.sleep(delay / 1000)
    fail_key = request.headers.get("x-fake-key")
    if fail_key and recorder.failures[fail_key] < int(request.headers.get("x-fake-fail-times", "0")):
        recorder.failures[fail_key] += 1
        return body, JSONResponse(error(503, "overloaded, try again"), 503)
    status = int(request.headers.get("x-fake-status", "0"))
    if status:
        return body, JSONResponse(error(status, f"fake error {status}"), status)
    return body, None


def _sse(events: list[bytes], request: Request) -> StreamingResponse:
    cut = int(request.headers.get("x-fake-cut-after", "0"))

    async def gen() -> Any:
        for i, event in enumerate(events):
            if cut and i >= cut:
                raise ConnectionResetError("fake cut")  # uvicorn closes the connection mid-body
            yield event
            await asyncio.sleep(0)

    return StreamingResponse(gen(), media_type="text/event-stream")


def _big_json(prefix: dict[str, Any], usage: dict[str, Any], size: int) -> StreamingResponse:
    async def gen() -> Any:
        yield json.dumps(prefix)[:-1].encode() + b', "padding": "'
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            yield chunk
            sent += len(chunk)
        yield b'", "usage": ' + json.dumps(usage).encode() + b"}"

    return StreamingResponse(gen(), media_type="application/json")


# -- OpenAI format (OpenAI, Groq, xAI, custom servers) ------------------------------------------------------------


def openai_error(status: int, message: str) -> dict[str, Any]:
    kinds = {401: "invalid_request_error", 429: "rate_limit_exceeded", 400: "invalid_request_error"}
    return {"error": {"message": message, "type": kinds.get(status, "server_error"), "param": None,
                      "code": str(status)}}


def openai_app(prefix: str = "/v1") -> Starlette:
    recorder = Recorder()

    def key_of(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" and token else None

    async def chat(request: Request) -> Response:
        body, refused = await _prelude(request, recorder, key_of(request), openai_error)
        if refused:
            return refused
        model = body.get("model", "unknown")
        reply = reply_text("openai", body.get("messages"))
        u = forced_usage(request, body.get("messages"), reply)
        usage = {"prompt_tokens": u["input"], "completion_tokens": u["output"],
                 "total_tokens": u["input"] + u["output"],
                 "prompt_tokens_details": {"cached_tokens": u["cache_read"]}}
        created, cid = int(time.time()), "chatcmpl-fake"
        if "x-fake-output-bytes" in request.headers:
            prefix_obj = {"id": cid, "object": "chat.completion", "created": created, "model": model,
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                                       "finish_reason": "stop"}]}
            return _big_json(prefix_obj, usage, int(request.headers["x-fake-output-bytes"]))
        if not body.get("stream"):
            return JSONResponse({
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": reply, "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": usage,
            })
        include = bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            obj: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                   "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                "finish_reason": finish}]}
            if include:
                obj["usage"] = None
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": word + " "}) for word in reply.split()]
        events.append(chunk({}, "stop"))
        if include:
            events.append(b"data: " + json.dumps({"id": cid, "object": "chat.completion.chunk", "created": created,
                                                   "model": model, "choices": [], "usage": usage}).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return _sse(events, request)

    async def responses(request: Request) -> Response:
        body, refused = await _prelude(request, recorder, key_of(request), openai_error)
        if refused:
            return refused
        reply = reply_text("openai", body.get("input"))
        u = forced_usage(request, body.get("input"), reply)
        usage = {"input_tokens": u["input"], "input_tokens_details": {"cached_tokens": u["cache_read"]},
                 "output_tokens": u["output"], "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": u["input"] + u["output"]}
        response = {
            "id": "resp_fake", "object": "response", "created_at": int(time.time()), "status": "completed",
            "model": body.get("model"), "output": [{
                "type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": reply, "annotations": []}]}],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": usage,
        }
        if not body.get("stream"):
            return JSONResponse(response)
        pending = {**response, "status": "in_progress", "output": [], "usage": None}
        events = [
            _named("response.created", {"type": "response.created", "sequence_number": 0, "response": pending}),
            _named("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": 1,
                                                  "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                                                  "delta": reply, "logprobs": []}),
            _named("response.completed", {"type": "response.completed", "sequence_number": 2, "response": response}),
        ]
        return _sse(events, request)

    async def embeddings(request: Request) -> Response:
        body, refused = await _prelude(request, recorder, key_of(request), openai_error)
        if refused:
            return refused
        n = count_words(body.get("input"))
        return JSONResponse({"object": "list", "model": body.get("model"),
                             "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}],
                             "usage": {"prompt_tokens": n, "total_tokens": n}})

    app = Starlette(routes=[
        Route(f"{prefix}/chat/completions", chat, methods=["POST"]),
        Route(f"{prefix}/responses", responses, methods=["POST"]),
        Route(f"{prefix}/embeddings", embeddings, methods=["POST"]),
    ])
    app.state.recorder = recorder
    return app


def _named(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


# -- Anthropic Messages ------------------------------------------------------------------------------------------


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kinds = {401: "authentication_error", 429: "rate_limit_error", 400: "invalid_request_error",
             529: "overloaded_error"}
    return {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": message}}


def _wants_tool(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    last = " ".join(_texts(messages[-1:])) if messages else ""
    return bool(body.get("tools")) and "weather" in last.lower()


def anthropic_app() -> Starlette:
    recorder = Recorder()

    async def messages(request: Request) -> Response:
        # x-api-key, or a bearer token (what SDK 2.x sends)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        key = request.headers.get("x-api-key") or (token if scheme.lower() == "bearer" and token else None)
        body, refused = await _prelude(request, recorder, key, anthropic_error)
        if refused:
            return refused
        model = body.get("model", "unknown")
        reply = reply_text("anthropic", [body.get("system"), body.get("messages")])
        u = forced_usage(request, [body.get("system"), body.get("messages")], reply)
        tool = _wants_tool(body)
        usage = {"input_tokens": u["input"], "output_tokens": u["output"],
                 "cache_read_input_tokens": u["cache_read"], "cache_creation_input_tokens": u["cache_write"]}
        content: list[dict[str, Any]] = [{"type": "text", "text": reply}]
        if tool:
            name = body["tools"][0]["name"]
            content.append({"type": "tool_use", "id": "toolu_fake1", "name": name, "input": {"city": "Paris"}})
        stop = "tool_use" if tool else "end_turn"
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
                   "stop_reason": stop, "stop_sequence": None, "usage": usage}
        if not body.get("stream"):
            return JSONResponse(message)
        start_usage = {**usage, "output_tokens": 1}
        events = [
            _named("message_start", {"type": "message_start", "message": {**message, "content": [],
                                                                            "stop_reason": None,
                                                                            "usage": start_usage}}),
            _named("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}}),
            _named("ping", {"type": "ping"}),
        ]
        for word in reply.split():
            events.append(_named("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                         "delta": {"type": "text_delta", "text": word + " "}}))
        events.append(_named("content_block_stop", {"type": "content_block_stop", "index": 0}))
        if tool:
            events.append(_named("content_block_start", {
                "type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "toolu_fake1", "name": content[1]["name"], "input": {}}}))
            for part in ('{"city": ', '"Paris"}'):
                events.append(_named("content_block_delta", {"type": "content_block_delta", "index": 1,
                                                             "delta": {"type": "input_json_delta",
                                                                       "partial_json": part}}))
            events.append(_named("content_block_stop", {"type": "content_block_stop", "index": 1}))
        events.append(_named("message_delta", {"type": "message_delta",
                                               "delta": {"stop_reason": stop, "stop_sequence": None},
                                               "usage": {"output_tokens": u["output"]}}))
        events.append(_named("message_stop", {"type": "message_stop"}))
        return _sse(events, request)

    app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])
    app.state.recorder = recorder
    return app


# -- Gemini generateContent ----------------------------------------------------------------------------------------


def gemini_error(status: int, message: str) -> dict[str, Any]:
    names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 429: "RESOURCE_EXHAUSTED",
             500: "INTERNAL", 503: "UNAVAILABLE"}
    return {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}


def gemini_app() -> Starlette:
    recorder = Recorder()

    async def generate(request: Request) -> Response:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        body, refused = await _prelude(request, recorder, key, gemini_error)
        if refused:
            return refused
        model, _, verb = request.path_params["target"].partition(":")
        texts = [body.get("systemInstruction"), body.get("contents")]
        reply = reply_text("gemini", texts)
        u = forced_usage(request, texts, reply)
        usage = {"promptTokenCount": u["input"] + u["cache_read"], "candidatesTokenCount": u["output"],
                 "totalTokenCount": u["input"] + u["cache_read"] + u["output"]}
        if u["cache_read"]:
            usage["cachedContentTokenCount"] = u["cache_read"]
        contents = body.get("contents") or []
        wants_tool = bool(body.get("tools")) and "weather" in " ".join(_texts(contents[-1:])).lower()
        parts: list[dict[str, Any]] = [{"text": reply}]
        if wants_tool:
            name = body["tools"][0]["functionDeclarations"][0]["name"]
            parts.append({"functionCall": {"name": name, "args": {"city": "Paris"}}})
        if verb == "generateContent":
            return JSONResponse({"candidates": [{"content": {"role": "model", "parts": parts},
                                                 "finishReason": "STOP", "index": 0}],
                                 "usageMetadata": usage, "modelVersion": model, "responseId": "fake"})
        if verb != "streamGenerateContent":
            return JSONResponse(gemini_error(404, f"unknown method {verb}"), 404)
        words = reply.split()
        events = []
        for i, word in enumerate(words):
            chunk: dict[str, Any] = {"candidates": [{"content": {"role": "model", "parts": [{"text": word + " "}]},
                                                     "index": 0}],
                                     "usageMetadata": {"promptTokenCount": usage["promptTokenCount"],
                                                       "totalTokenCount": usage["promptTokenCount"]},
                                     "modelVersion": model}
            if i == len(words) - 1:
                if wants_tool:
                    chunk["candidates"][0]["content"]["parts"].append(parts[1])
                chunk["candidates"][0]["finishReason"] = "STOP"
                chunk["usageMetadata"] = usage
            events.append(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
        return _sse(events, request)

    app = Starlette(routes=[Route("/v1beta/models/{target:path}", generate, methods=["POST"]),
                            Route("/v1/models/{target:path}", generate, methods=["POST"])])
    app.state.recorder = recorder
    return app
