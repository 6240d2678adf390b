"""Fake Gemini (Google AI Studio) server: `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent`
(SSE with `?alt=sse`, a JSON array otherwise) and `:countTokens`; the same under `/v1/models/`.

Auth: `x-goog-api-key` header or `?key=`. Usage mapping from the canonical `Usage`:
`promptTokenCount = input + cache_read`, `cachedContentTokenCount = cache_read` (only when non-zero),
`candidatesTokenCount = output`, `totalTokenCount = prompt + output`. A functionCall part is answered when the
request has function declarations and the last content mentions "weather".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from harness.fakes.common import (
    FakeApp,
    Usage,
    admit,
    error_response,
    json_answer,
    last_text,
    make_usage,
    padding,
    prompt_of,
    reply_text,
    sse_data,
    stream,
    word_pieces,
)

TOOL_ARGS = {"city": "Paris"}
_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
             429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def gemini_error(status: int, message: str) -> dict[str, Any]:
    """Gemini's error body."""
    return {"error": {"code": status, "message": message, "status": _STATUSES.get(status, "UNKNOWN")}}


def gemini_usage(u: Usage) -> dict[str, Any]:
    prompt = u.input + u.cache_read
    usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": u.output,
                             "totalTokenCount": prompt + u.output,
                             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    if u.cache_read:
        usage["cachedContentTokenCount"] = u.cache_read
    return usage


def _tool_name(body: dict[str, Any]) -> str | None:
    if "weather" not in last_text(body.get("contents")).lower():
        return None
    for tool in body.get("tools") or []:
        declarations = tool.get("functionDeclarations") or tool.get("function_declarations") or []
        if declarations:
            return str(declarations[0].get("name", "get_weather"))
    return None


def gemini_app() -> FakeApp:
    """A fresh Gemini fake with its own recorder."""

    async def models(request: Request) -> Response:
        key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
        body, behaviour, refused = await admit(request, app.recorder, key, gemini_error)
        if refused:
            return refused
        model, _, verb = request.path_params["target"].partition(":")
        prompt = prompt_of("gemini", body)
        if verb == "countTokens":
            return json_answer(request, behaviour, {"totalTokens": make_usage(prompt, "", behaviour.usage).input})
        if verb not in ("generateContent", "streamGenerateContent"):
            return error_response(gemini_error, 404, f"unknown method {verb!r}")
        reply = reply_text("gemini", prompt)
        usage = behaviour.raw_usage or gemini_usage(make_usage(prompt, reply, behaviour.usage))
        tool = _tool_name(body)
        call = {"functionCall": {"name": tool, "args": TOOL_ARGS}} if tool else None
        if verb == "generateContent":
            parts = [{"text": reply}, *([call] if call else [])]
            return json_answer(request, behaviour, {
                "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": usage, "modelVersion": model, "responseId": "fake-response",
                **(behaviour.extra or {})})
        chunks = _chunks(model, [*word_pieces(reply), *padding(behaviour.output_bytes)], call, usage,
                         behaviour.extra or {})
        if request.query_params.get("alt") == "sse":
            return stream(request, behaviour, (sse_data(c, "\r\n\r\n") for c in chunks))
        return stream(request, behaviour, _json_array(chunks), "application/json")

    app = FakeApp([Route("/v1beta/models/{target:path}", models, methods=["POST"]),
                   Route("/v1/models/{target:path}", models, methods=["POST"])])
    return app


def _chunks(model: str, pieces: list[str], call: dict[str, Any] | None, usage: dict[str, Any],
            extra: dict[str, Any]) -> Iterator[dict[str, Any]]:
    running = {"promptTokenCount": usage.get("promptTokenCount", 0),
               "totalTokenCount": usage.get("promptTokenCount", 0)}
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        parts: list[dict[str, Any]] = [{"text": piece}, *([call] if call and last else [])]
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        yield {"candidates": [candidate], "usageMetadata": usage if last else running, "modelVersion": model,
               "responseId": "fake-response", **(extra if last else {})}


def _json_array(chunks: Iterator[dict[str, Any]]) -> Iterator[bytes]:
    yield b"["
    for i, chunk in enumerate(chunks):
        yield (b",\r\n" if i else b"") + json.dumps(chunk).encode()
    yield b"]"
