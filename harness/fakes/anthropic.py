"""Fake Anthropic Messages server: `POST /v1/messages` as JSON or SSE (`"stream": true`).

Auth: `x-api-key`, or `Authorization: Bearer <key>` (what the anthropic SDK 2.x sends). Usage mapping from
the canonical `Usage`: `input_tokens = input`, `output_tokens = output`, `cache_read_input_tokens = cache_read`,
`cache_creation_input_tokens = cache_write`. A tool_use block is answered when the request has tools and the last
message mentions "weather".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from harness.fakes.common import (
    Behaviour,
    FakeApp,
    Usage,
    admit,
    bearer,
    json_answer,
    last_text,
    make_usage,
    padding,
    prompt_of,
    reply_text,
    sse_event,
    stream,
    word_pieces,
)

TOOL_INPUT = {"city": "Paris"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}


def anthropic_usage(u: Usage) -> dict[str, Any]:
    return {"input_tokens": u.input, "output_tokens": u.output, "cache_read_input_tokens": u.cache_read,
            "cache_creation_input_tokens": u.cache_write}


def anthropic_app() -> FakeApp:
    """A fresh Anthropic fake with its own recorder."""

    async def messages(request: Request) -> Response:
        key = request.headers.get("x-api-key") or bearer(request)
        body, behaviour, refused = await admit(request, app.recorder, key, anthropic_error)
        if refused:
            return refused
        reply = reply_text("anthropic", prompt_of("anthropic", body))
        usage = make_usage(prompt_of("anthropic", body), reply, behaviour.usage)
        content: list[dict[str, Any]] = [{"type": "text", "text": reply}]
        tools = body.get("tools")
        if tools and "weather" in last_text(body.get("messages")).lower():
            content.append({"type": "tool_use", "id": "toolu_fake1", "name": tools[0].get("name", "get_weather"),
                            "input": TOOL_INPUT})
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model", "unknown"),
                   "content": content, "stop_reason": "tool_use" if len(content) > 1 else "end_turn",
                   "stop_sequence": None, "usage": behaviour.raw_usage or anthropic_usage(usage),
                   **(behaviour.extra or {})}
        if not body.get("stream"):
            return json_answer(request, behaviour, message)
        return stream(request, behaviour, _events(message, usage, behaviour))

    app = FakeApp([Route("/v1/messages", messages, methods=["POST"])])
    return app


def _events(message: dict[str, Any], usage: Usage, behaviour: Behaviour) -> Iterator[bytes]:
    text, *tools = message["content"]
    start = {**message, "content": [], "stop_reason": None,
             "usage": {**message["usage"], "output_tokens": min(1, usage.output)}}
    final = message["usage"] if behaviour.raw_usage else {"output_tokens": usage.output}
    yield sse_event("message_start", {"type": "message_start", "message": start})
    yield sse_event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}})
    yield sse_event("ping", {"type": "ping"})
    for piece in [*word_pieces(text["text"]), *padding(behaviour.output_bytes)]:
        yield sse_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "text_delta", "text": piece}})
    yield sse_event("content_block_stop", {"type": "content_block_stop", "index": 0})
    for index, tool in enumerate(tools, start=1):
        yield sse_event("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {**tool, "input": {}}})
        arguments = json.dumps(tool["input"])
        middle = len(arguments) // 2
        for part in (arguments[:middle], arguments[middle:]):
            yield sse_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "input_json_delta", "partial_json": part}})
        yield sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
    yield sse_event("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                      "usage": final})
    yield sse_event("message_stop", {"type": "message_stop"})
