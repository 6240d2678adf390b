"""Translation between OpenAI Chat Completions and Anthropic Messages / Gemini generateContent: pure functions,
and the translator a compat call's target carries (gateway/providers/base.py `Translator`): `AnthropicCompat`,
`GeminiCompat`, and `OpenAICompat` for the providers that speak Chat Completions already.

Requests: system and developer messages become Anthropic's `system` / Gemini's `systemInstruction`; consecutive
messages of one role are merged (Anthropic requires alternation); images by https URL or `data:` base64;
assistant `tool_calls` and `tool` results; `tools` and `tool_choice`; the output limit as the call resolved it
(one number, the one reserved for: gateway/providers/output_limit.py), `temperature`, `top_p`, `stop`.
Responses and streams come back as `chat.completion` and `chat.completion.chunk` objects, with a final usage
chunk when the client asked for `stream_options.include_usage`. Not supported (400): `n` > 1, audio and file
content parts.
"""

from __future__ import annotations

import json
import mimetypes
import time
import uuid
from typing import TYPE_CHECKING, Any

from gateway.errors import CompatError, CompatUpstreamError, to_response
from gateway.exchange import Call
from gateway.providers.base import Adapter, Translator
from gateway.providers.sse import Event

if TYPE_CHECKING:
    import httpx

SSE_DONE = b"data: [DONE]\n\n"


def sse_chunk(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}


def openai_error(status: int, message: str, type_: str | None = None, code: str | None = None,
                 param: str | None = None) -> dict[str, Any]:
    kind = type_ or ERROR_TYPES.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_from_provider(provider: str, status: int, body: bytes) -> dict[str, Any]:
    message = body.decode("utf-8", "replace")[:500]
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = str(data["error"].get("message") or message)
    return openai_error(status, f"{provider}: {message}")


# -- request pieces ---------------------------------------------------------------------------------------------


def _check_common(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise CompatError("messages must be a non-empty list", "messages")
    n = body.get("n", 1)
    if n not in (1, None):
        raise CompatError("n > 1 is not supported on this provider through the compat endpoint", "n")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
            raise CompatError(f"messages[{i}].role must be system, developer, user, assistant or tool",
                              f"messages[{i}].role")
    return messages


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    """OpenAI content -> a list of {"type": "text"|"image", ...} in a neutral form."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise CompatError(f"{where} must be a string or a list of parts", where)
    out = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            out.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "image_url":
            url = part.get("image_url", {})
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str):
                raise CompatError(f"{where}[{i}].image_url.url must be a string", f"{where}[{i}]")
            out.append(_image(url, f"{where}[{i}]"))
        else:
            raise CompatError(f"{where}[{i}]: content part type {kind!r} is not supported", f"{where}[{i}]")
    return out


def _image(url: str, where: str) -> dict[str, Any]:
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media, _, encoding = header.partition(";")
        if encoding != "base64" or not data:
            raise CompatError(f"{where}: data URLs must be base64", where)
        if media and not media.lower().startswith("image/"):
            # a PDF, audio or video would reach the provider as inline data it bills by page or second, while the
            # worst case was reserved for one image: refused, as an https URL to one is
            raise CompatError(f"{where}: only images are translated (this data URL is {media})", where)
        return {"type": "image", "media_type": media or "image/png", "data": data}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "url": url}
    raise CompatError(f"{where}: image URL must be https or a data: URL", where)


def _text_of(content: Any) -> str:
    return "".join(p["text"] for p in _parts(content, "content") if p["type"] == "text")


def _stop(body: dict[str, Any]) -> list[str] | None:
    stop = body.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise CompatError("stop must be a string or a list of strings", "stop")


def _arguments(call: dict[str, Any]) -> Any:
    raw = (call.get("function") or {}).get("arguments") or "{}"
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise CompatError("tool_calls[].function.arguments must be a JSON string", "tool_calls") from None


def _functions(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise CompatError("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise CompatError(f"tools[{i}] must be a function tool", f"tools[{i}]")
        out.append(tool["function"])
    return out


# -- Anthropic ---------------------------------------------------------------------------------------------------


def _anthropic_block(part: dict[str, Any]) -> dict[str, Any]:
    if part["type"] == "text":
        return {"type": "text", "text": part["text"]}
    if "url" in part:
        return {"type": "image", "source": {"type": "url", "url": part["url"]}}
    return {"type": "image", "source": {"type": "base64", "media_type": part["media_type"], "data": part["data"]}}


def to_anthropic_request(body: dict[str, Any], model: str, max_tokens: int) -> dict[str, Any]:
    """`max_tokens`: the call's resolved output limit (gateway/providers/output_limit.py), the reserved number."""
    messages = _check_common(body)
    system: list[str] = []
    turns: list[dict[str, Any]] = []

    def add(role: str, blocks: list[dict[str, Any]]) -> None:
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": list(blocks)})

    for i, m in enumerate(messages):
        role = m["role"]
        if role in ("system", "developer"):
            system.append(_text_of(m.get("content")))
        elif role == "user":
            add("user", [_anthropic_block(p) for p in _parts(m.get("content"), f"messages[{i}].content")])
        elif role == "assistant":
            blocks = [_anthropic_block(p) for p in _parts(m.get("content"), f"messages[{i}].content")]
            for call in m.get("tool_calls") or []:
                blocks.append({"type": "tool_use", "id": call.get("id"), "name": (call.get("function") or {})
                               .get("name"), "input": _arguments(call)})
            add("assistant", blocks)
        else:  # tool
            add("user", [{"type": "tool_result", "tool_use_id": m.get("tool_call_id"),
                          "content": _text_of(m.get("content"))}])
    out: dict[str, Any] = {"model": model, "messages": turns, "max_tokens": max_tokens}
    if system:
        out["system"] = "\n\n".join(system)
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(ours) is not None:
            out[theirs] = body[ours]
    stop = _stop(body)
    if stop:
        out["stop_sequences"] = stop
    if body.get("stream") is True:
        out["stream"] = True
    functions = _functions(body)
    choice = body.get("tool_choice")
    if functions and choice != "none":
        out["tools"] = [{"name": f.get("name"), "description": f.get("description", ""),
                         "input_schema": f.get("parameters") or {"type": "object", "properties": {}}}
                        for f in functions]
        if choice == "required":
            out["tool_choice"] = {"type": "any"}
        elif isinstance(choice, dict):
            out["tool_choice"] = {"type": "tool", "name": (choice.get("function") or {}).get("name")}
        elif choice == "auto":
            out["tool_choice"] = {"type": "auto"}
    return out


ANTHROPIC_FINISH = {"end_turn": "stop", "max_tokens": "length", "stop_sequence": "stop", "tool_use": "tool_calls",
                    "pause_turn": "stop", "refusal": "content_filter"}


def _anthropic_usage(u: dict[str, Any]) -> dict[str, Any]:
    read = u.get("cache_read_input_tokens") or 0
    prompt = (u.get("input_tokens") or 0) + read + (u.get("cache_creation_input_tokens") or 0)
    out = u.get("output_tokens") or 0
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
            "prompt_tokens_details": {"cached_tokens": read}}


def from_anthropic_response(resp: dict[str, Any], model: str) -> dict[str, Any]:
    text, calls = [], []
    for block in resp.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + str(resp.get("id", uuid.uuid4().hex)), "object": "chat.completion",
        "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": ANTHROPIC_FINISH.get(resp.get("stop_reason") or "end_turn", "stop")}],
        "usage": _anthropic_usage(resp.get("usage") or {}),
    }


class _ToOpenAI:
    """A provider's answers in OpenAI's shapes: the shared half of the Anthropic and Gemini translators. A stream
    becomes `chat.completion.chunk` events (the first says `role`), then a usage chunk when the client asked for
    `stream_options.include_usage`, then `[DONE]`."""

    reshapes = True

    def __init__(self, model: str, *, stream: bool, include_usage: bool) -> None:
        self.model = model
        self.stream = stream
        self.include_usage = include_usage
        self.id = "chatcmpl-" + uuid.uuid4().hex
        self.created = int(time.time())
        self.usage: dict[str, int] = {"input": 0, "output": 0, "cache_read": 0, "cache_write": 0}
        self.started = False

    def request(self, call: Call) -> tuple[Any, bool]:
        """The translated body; any shape the translation cannot read (a tool call that is not an object...) is a
        CompatError naming `messages`."""
        try:
            return self._request(call), False
        except CompatError:
            raise
        except (TypeError, AttributeError, KeyError, ValueError) as exc:
            raise CompatError(f"the request's messages or tools have an unexpected shape ({type(exc).__name__})",
                              "messages") from None

    def _request(self, call: Call) -> dict[str, Any]:
        raise NotImplementedError

    def streams(self, response: httpx.Response) -> bool:
        return self.stream and response.status_code < 400

    def error_body(self, status: int, message: str, param: str | None) -> dict[str, Any]:
        return openai_error(status, message, param=param)

    def provider_error(self, provider: str, status: int, raw: bytes) -> bytes:
        return json.dumps(error_from_provider(provider, status, raw)).encode()

    def answer(self, data: Any) -> Any:
        raise NotImplementedError

    def stream_headers(self, upstream: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

    def feed(self, event: Event) -> bytes:
        data = event.json()
        if not isinstance(data, dict):
            return b""
        return b"".join(sse_chunk(chunk) for chunk in self.chunks(event.event, data))

    def chunks(self, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The OpenAI chunks for one event of the provider's stream (its name and its parsed data)."""
        raise NotImplementedError

    def finish(self, pending: bytes) -> bytes:
        return b"".join(sse_chunk(chunk) for chunk in self.last_chunks()) + SSE_DONE

    def failed(self, error: CompatUpstreamError) -> bytes:
        return sse_chunk(openai_error(to_response(error).status, str(error)))

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if not self.started:
            delta = {"role": "assistant", **delta}
            self.started = True
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    def last_chunks(self) -> list[dict[str, Any]]:
        """The usage chunk, when the client asked for it."""
        if not self.include_usage:
            return []
        u = self.usage
        prompt = u["input"] + u["cache_read"] + u["cache_write"]
        return [{"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                 "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": u["output"],
                                          "total_tokens": prompt + u["output"],
                                          "prompt_tokens_details": {"cached_tokens": u["cache_read"]}}}]


class AnthropicCompat(_ToOpenAI):
    """Chat Completions to Anthropic Messages and back. Stream `usage`: input excludes cache tokens (Anthropic's
    own count)."""

    def __init__(self, model: str, *, stream: bool, include_usage: bool) -> None:
        super().__init__(model, stream=stream, include_usage=include_usage)
        self.tool_index: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index

    @staticmethod
    def endpoint(model: str, stream: bool) -> tuple[str, str]:
        return "v1/messages", ""

    def _request(self, call: Call) -> dict[str, Any]:
        assert call.output_limit is not None
        return to_anthropic_request(call.body, self.model, call.output_limit)

    def answer(self, data: Any) -> Any:
        return from_anthropic_response(data, self.model)

    def chunks(self, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        kind = data.get("type", event)
        if kind == "message_start":
            u = (data.get("message") or {}).get("usage") or {}
            self.usage.update(input=u.get("input_tokens") or 0, output=u.get("output_tokens") or 0,
                              cache_read=u.get("cache_read_input_tokens") or 0,
                              cache_write=u.get("cache_creation_input_tokens") or 0)
            return [self.chunk({"content": ""})]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self.tool_index[data.get("index", 0)] = len(self.tool_index)
                return [self.chunk({"tool_calls": [{"index": index, "id": block.get("id"), "type": "function",
                                                    "function": {"name": block.get("name"), "arguments": ""}}]})]
            if block.get("text"):
                return [self.chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self.chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self.tool_index.get(data.get("index", 0), 0)
                return [self.chunk({"tool_calls": [{"index": index,
                                                    "function": {"arguments": delta.get("partial_json", "")}}]})]
            return []
        if kind == "message_delta":
            u = data.get("usage") or {}
            if u.get("output_tokens") is not None:
                self.usage["output"] = u["output_tokens"]
            reason = (data.get("delta") or {}).get("stop_reason")
            return [self.chunk({}, ANTHROPIC_FINISH.get(reason or "end_turn", "stop"))]
        if kind == "error":
            error = data.get("error") or {}
            raise CompatUpstreamError("anthropic", f"anthropic: {error.get('message', 'stream error')}")
        return []


# -- Gemini ------------------------------------------------------------------------------------------------------


def _gemini_part(part: dict[str, Any]) -> dict[str, Any]:
    if part["type"] == "text":
        return {"text": part["text"]}
    if "url" in part:
        mime = mimetypes.guess_type(part["url"].split("?")[0])[0] or "image/jpeg"
        if not mime.startswith("image/"):  # an image_url part is an image: a PDF or a video bills far more
            raise CompatError(f"image_url must point to an image, not {mime}", "messages")
        return {"fileData": {"mimeType": mime, "fileUri": part["url"]}}
    return {"inlineData": {"mimeType": part["media_type"], "data": part["data"]}}


def to_gemini_request(body: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    """`max_tokens`: the call's resolved output limit when it is sent (None: the client set none)."""
    messages = _check_common(body)
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}

    def add(role: str, parts: list[dict[str, Any]]) -> None:
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": list(parts)})

    for i, m in enumerate(messages):
        role = m["role"]
        if role in ("system", "developer"):
            system.append(_text_of(m.get("content")))
        elif role == "user":
            add("user", [_gemini_part(p) for p in _parts(m.get("content"), f"messages[{i}].content")])
        elif role == "assistant":
            parts = [_gemini_part(p) for p in _parts(m.get("content"), f"messages[{i}].content")]
            for call in m.get("tool_calls") or []:
                name = str((call.get("function") or {}).get("name") or "")
                names[str(call.get("id"))] = name
                parts.append({"functionCall": {"name": name, "args": _arguments(call)}})
            add("model", parts)
        else:
            called = names.get(str(m.get("tool_call_id")))
            if called is None:
                raise CompatError(f"messages[{i}].tool_call_id names no earlier tool call", f"messages[{i}]")
            add("user", [{"functionResponse": {"name": called, "response": {"content": _text_of(m.get("content"))}}}])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    if body.get("temperature") is not None:
        config["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        config["topP"] = body["top_p"]
    if _stop(body):
        config["stopSequences"] = _stop(body)
    if config:
        out["generationConfig"] = config
    functions = _functions(body)
    if functions:
        out["tools"] = [{"functionDeclarations": [
            {k: v for k, v in (("name", f.get("name")), ("description", f.get("description")),
                               ("parameters", f.get("parameters"))) if v is not None} for f in functions]}]
        choice = body.get("tool_choice")
        if choice is not None:
            mode: dict[str, Any] = {"mode": {"auto": "AUTO", "required": "ANY", "none": "NONE"}.get(choice, "ANY")
                                    if isinstance(choice, str) else "ANY"}
            if isinstance(choice, dict):
                mode["allowedFunctionNames"] = [(choice.get("function") or {}).get("name")]
            out["toolConfig"] = {"functionCallingConfig": mode}
    return out


GEMINI_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
                 "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter"}


def _gemini_usage(u: dict[str, Any]) -> dict[str, Any]:
    prompt = u.get("promptTokenCount") or 0
    out = (u.get("candidatesTokenCount") or 0) + (u.get("thoughtsTokenCount") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
            "prompt_tokens_details": {"cached_tokens": u.get("cachedContentTokenCount") or 0}}


def _gemini_content(candidate: dict[str, Any], call_offset: int = 0) -> tuple[str, list[dict[str, Any]]]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if "text" in part and not part.get("thought"):
            text.append(part["text"])
        elif "functionCall" in part:
            call = part["functionCall"]
            calls.append({"id": f"call_{call_offset + len(calls)}", "type": "function",
                          "function": {"name": call.get("name"), "arguments": json.dumps(call.get("args") or {})}})
    return "".join(text), calls


def from_gemini_response(resp: dict[str, Any], model: str) -> dict[str, Any]:
    candidate = (resp.get("candidates") or [{}])[0]
    text, calls = _gemini_content(candidate)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    finish = "tool_calls" if calls else GEMINI_FINISH.get(candidate.get("finishReason") or "STOP", "stop")
    return {"id": "chatcmpl-" + str(resp.get("responseId") or uuid.uuid4().hex), "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _gemini_usage(resp.get("usageMetadata") or {})}


class GeminiCompat(_ToOpenAI):
    """Chat Completions to Gemini generateContent and back. Stream `usage`: input is promptTokenCount minus cached
    tokens."""

    def __init__(self, model: str, *, stream: bool, include_usage: bool) -> None:
        super().__init__(model, stream=stream, include_usage=include_usage)
        self.calls = 0

    @staticmethod
    def endpoint(model: str, stream: bool) -> tuple[str, str]:
        verb = "streamGenerateContent" if stream else "generateContent"
        return f"v1beta/models/{model}:{verb}", "alt=sse" if stream else ""

    def _request(self, call: Call) -> dict[str, Any]:
        return to_gemini_request(call.body, call.output_limit if call.limit_field else None)

    def answer(self, data: Any) -> Any:
        return from_gemini_response(data, self.model)

    def chunks(self, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        if isinstance(data.get("error"), dict):
            raise CompatUpstreamError("google-ai-studio",
                                      f"google-ai-studio: {data['error'].get('message', 'stream error')}")
        out: list[dict[str, Any]] = []
        if isinstance(data.get("usageMetadata"), dict):
            u = _gemini_usage(data["usageMetadata"])
            cached = u["prompt_tokens_details"]["cached_tokens"]
            self.usage.update(input=u["prompt_tokens"] - cached, output=u["completion_tokens"], cache_read=cached)
        candidate = (data.get("candidates") or [{}])[0]
        text, calls = _gemini_content(candidate, self.calls)
        if text or not self.started:
            out.append(self.chunk({"content": text}))
        for call in calls:
            out.append(self.chunk({"tool_calls": [{"index": self.calls, **call}]}))
            self.calls += 1
        if candidate.get("finishReason"):
            finish = "tool_calls" if self.calls else GEMINI_FINISH.get(candidate["finishReason"], "stop")
            out.append(self.chunk({}, finish))
        return out


# -- OpenAI-format providers ---------------------------------------------------------------------------------------


class OpenAICompat:
    """Chat Completions to a provider that speaks it (OpenAI, Groq, xAI, custom servers): the body with the bare
    model name, the answer and its stream as the provider sent them (the usage chunk the gateway asked for and the
    client did not is hidden by the adapter's stream reader), its errors too."""

    reshapes = True

    def __init__(self, adapter: Adapter, model: str, *, stream: bool) -> None:
        self.adapter = adapter
        self.model = model
        self.stream = stream

    @staticmethod
    def endpoint(provider: str) -> tuple[str, str]:
        return ("v1/chat/completions" if provider == "grok" else "chat/completions"), ""

    def request(self, call: Call) -> tuple[Any, bool]:
        return self.adapter.prepare(call.path, {**call.body, "model": self.model}, call.stream)

    def streams(self, response: httpx.Response) -> bool:
        return self.stream and response.status_code < 400

    def error_body(self, status: int, message: str, param: str | None) -> dict[str, Any]:
        return openai_error(status, message, param=param)

    def provider_error(self, provider: str, status: int, raw: bytes) -> bytes:
        return raw

    def answer(self, data: Any) -> Any:
        return data

    def stream_headers(self, upstream: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [h for h in upstream if h[0] != b"content-length"]

    def feed(self, event: Event) -> bytes:
        return event.raw

    def finish(self, pending: bytes) -> bytes:
        return b""

    def failed(self, error: CompatUpstreamError) -> bytes:
        return sse_chunk(openai_error(to_response(error).status, str(error)))


# the providers whose API is not Chat Completions: their calls are translated both ways
TRANSLATED: dict[str, type[AnthropicCompat] | type[GeminiCompat]] = {
    "anthropic": AnthropicCompat, "google-ai-studio": GeminiCompat}


def compat_endpoint(provider: str, model: str, stream: bool) -> tuple[str, str]:
    """The provider's upstream path and query for a compat call."""
    translated = TRANSLATED.get(provider)
    return OpenAICompat.endpoint(provider) if translated is None else translated.endpoint(model, stream)


def compat_translator(provider: str, model: str, adapter: Adapter, *, stream: bool,
                      include_usage: bool) -> Translator:
    translated = TRANSLATED.get(provider)
    if translated is None:
        return OpenAICompat(adapter, model, stream=stream)
    return translated(model, stream=stream, include_usage=include_usage)
