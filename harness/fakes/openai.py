"""Fake OpenAI-format server (OpenAI, Groq, xAI, custom OpenAI-compatible): chat completions, responses, embeddings.

Routes under a configurable prefix ("/v1", "/openai/v1"...): `POST {prefix}/chat/completions`, `{prefix}/responses`,
`{prefix}/embeddings`. Auth: `Authorization: Bearer <key>`. Usage mapping from the canonical `Usage`:
chat `prompt_tokens = input + cache_read`, `prompt_tokens_details.cached_tokens = cache_read`,
`completion_tokens = output`; responses `input_tokens = input + cache_read`,
`input_tokens_details.cached_tokens = cache_read`, `output_tokens = output`. A function tool call is answered when the
request has tools and the last message mentions "weather".
"""

from __future__ import annotations

import base64
import struct
import time
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
    count_words,
    json_answer,
    last_text,
    make_usage,
    padding,
    prompt_of,
    reply_text,
    sse_data,
    sse_event,
    stream,
    word_pieces,
)

TOOL_ARGS = '{"city": "Paris"}'
_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_error",
                404: "invalid_request_error", 429: "rate_limit_exceeded"}
_ERROR_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded", 503: "service_unavailable"}


def openai_error(status: int, message: str) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": _ERROR_TYPES.get(status, "server_error"), "param": None,
                      "code": _ERROR_CODES.get(status, str(status))}}


def chat_usage(u: Usage) -> dict[str, Any]:
    prompt = u.input + u.cache_read
    return {"prompt_tokens": prompt, "completion_tokens": u.output, "total_tokens": prompt + u.output,
            "prompt_tokens_details": {"cached_tokens": u.cache_read, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def responses_usage(u: Usage) -> dict[str, Any]:
    prompt = u.input + u.cache_read
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": u.cache_read},
            "output_tokens": u.output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + u.output}


def _tool_name(tools: Any, items: Any) -> str | None:
    if not tools or "weather" not in last_text(items).lower():
        return None
    tool = tools[0]
    return str((tool.get("function") or tool).get("name", "get_weather"))


def openai_app(prefix: str = "/v1") -> FakeApp:
    """A fresh OpenAI-format fake (own recorder) serving under `prefix`."""
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""

    async def chat(request: Request) -> Response:
        body, behaviour, refused = await admit(request, app.recorder, bearer(request), openai_error)
        if refused:
            return refused
        messages = body.get("messages")
        reply = reply_text("openai", messages)
        usage = behaviour.raw_usage or chat_usage(make_usage(prompt_of("openai", body), reply, behaviour.usage))
        tool = _tool_name(body.get("tools"), messages)
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body.get("model", "unknown"),
                "system_fingerprint": "fp_fake", **(behaviour.extra or {})}
        finish = "tool_calls" if tool else "stop"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": reply, "refusal": None}
            if tool:
                message["tool_calls"] = [{"id": "call_fake1", "type": "function",
                                          "function": {"name": tool, "arguments": TOOL_ARGS}}]
            return json_answer(request, behaviour, {
                **base, "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": usage})
        include = bool((body.get("stream_options") or {}).get("include_usage")) or behaviour.groq_usage
        return stream(request, behaviour, _chat_events(base, reply, tool, finish, usage if include else None,
                                                       behaviour))

    async def responses(request: Request) -> Response:
        body, behaviour, refused = await admit(request, app.recorder, bearer(request), openai_error)
        if refused:
            return refused
        reply = reply_text("openai", prompt_of("openai-responses", body))
        usage = behaviour.raw_usage or responses_usage(make_usage(prompt_of("openai-responses", body), reply,
                                                                  behaviour.usage))
        tool = _tool_name(body.get("tools"), body.get("input"))
        message = {"type": "message", "id": "msg_fake", "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": reply, "annotations": [], "logprobs": []}]}
        output: list[dict[str, Any]] = [message]
        if tool:
            output.append({"type": "function_call", "id": "fc_fake1", "call_id": "call_fake1", "name": tool,
                           "arguments": TOOL_ARGS, "status": "completed"})
        response = {
            "id": "resp_fake", "object": "response", "created_at": int(time.time()), "status": "completed",
            "model": body.get("model", "unknown"), "output": output, "error": None, "incomplete_details": None,
            "instructions": body.get("instructions"), "metadata": {}, "parallel_tool_calls": True,
            "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "tools": body.get("tools") or [],
            "text": {"format": {"type": "text"}}, "usage": usage, **(behaviour.extra or {}),
        }
        if behaviour.end_event == "response.incomplete":
            response.update(status="incomplete", incomplete_details={"reason": "max_output_tokens"})
        if not body.get("stream"):
            return json_answer(request, behaviour, response)
        return stream(request, behaviour, _responses_events(response, reply, behaviour))

    async def embeddings(request: Request) -> Response:
        body, behaviour, refused = await admit(request, app.recorder, bearer(request), openai_error)
        if refused:
            return refused
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) and not all(isinstance(i, int) for i in inputs) else [inputs]
        data = []
        for index, item in enumerate(items):
            vector = [float(count_words(item)), float(index), 0.5, -0.5]
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = (behaviour.usage or {}).get("input", count_words(inputs))
        return json_answer(request, behaviour, {"object": "list", "model": body.get("model", "unknown"),
                                                "data": data, "usage": {"prompt_tokens": tokens,
                                                                        "total_tokens": tokens}})

    app = FakeApp([
        Route(f"{prefix}/chat/completions", chat, methods=["POST"]),
        Route(f"{prefix}/responses", responses, methods=["POST"]),
        Route(f"{prefix}/embeddings", embeddings, methods=["POST"]),
    ])
    return app


def _chat_events(base: dict[str, Any], reply: str, tool: str | None, finish: str, usage: dict[str, Any] | None,
                 behaviour: Behaviour) -> Iterator[bytes]:
    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        obj: dict[str, Any] = {**base, "object": "chat.completion.chunk",
                               "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": finish_reason}]}
        if usage is not None and not behaviour.groq_usage:
            obj["usage"] = None
        if finish_reason is not None and usage is not None and behaviour.groq_usage:
            obj["x_groq"] = {"id": "req_fake", "usage": usage}  # Groq: the usage rides on the finish chunk
        return sse_data(obj)

    yield chunk({"role": "assistant", "content": "", "refusal": None})
    for piece in word_pieces(reply):
        yield chunk({"content": piece})
    for piece in padding(behaviour.output_bytes):
        yield chunk({"content": piece})
    if tool:
        yield chunk({"tool_calls": [{"index": 0, "id": "call_fake1", "type": "function",
                                     "function": {"name": tool, "arguments": ""}}]})
        for part in ('{"city": ', '"Paris"}'):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
    yield chunk({}, finish)
    if usage is not None and not behaviour.groq_usage:
        yield sse_data({**base, "object": "chat.completion.chunk", "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def _responses_events(response: dict[str, Any], reply: str, behaviour: Behaviour) -> Iterator[bytes]:
    seq = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        return sse_event(kind, {"type": kind, "sequence_number": next(seq), **fields})

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    message, *calls = response["output"]
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    yield event("response.created", response=pending)
    yield event("response.in_progress", response=pending)
    yield event("response.output_item.added", output_index=0,
                item={**message, "status": "in_progress", "content": []})
    yield event("response.content_part.added", **where, part=part)
    for piece in [*word_pieces(reply), *padding(behaviour.output_bytes)]:
        yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
    yield event("response.output_text.done", **where, text=reply, logprobs=[])
    yield event("response.content_part.done", **where, part={**part, "text": reply})
    yield event("response.output_item.done", output_index=0, item=message)
    for index, call in enumerate(calls, start=1):
        if call.get("type") != "function_call":  # e.g. a web_search_call: added and done, nothing streamed
            yield event("response.output_item.added", output_index=index, item={**call, "status": "in_progress"})
            yield event("response.output_item.done", output_index=index, item=call)
            continue
        yield event("response.output_item.added", output_index=index,
                    item={**call, "arguments": "", "status": "in_progress"})
        yield event("response.function_call_arguments.delta", item_id=call["id"], output_index=index,
                    delta=call["arguments"])
        yield event("response.function_call_arguments.done", item_id=call["id"], output_index=index,
                    arguments=call["arguments"], name=call["name"])
        yield event("response.output_item.done", output_index=index, item=call)
    yield event(behaviour.end_event or "response.completed", response=response)

