"""The OpenAI wire format: OpenAI itself, Groq, xAI (grok) and operator-registered custom servers.

Streams: Chat Completions only report usage when asked (`stream_options.include_usage`), in a last chunk with
empty `choices`. When a client streams without asking, the router adds the option upstream and this adapter
hides that extra chunk from the client (it never asked for it). The Responses API reports usage in its
`response.completed` event; embeddings in the JSON body.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.exchange import Usage
from gateway.providers.base import as_int
from gateway.providers.sse import Event


def usage_of(data: Any) -> Usage | None:
    """Usage of a chat completion, a Responses API response, or an embeddings response."""
    if not isinstance(data, dict):
        return None
    u = data.get("usage")
    if not isinstance(u, dict):
        return None
    if "prompt_tokens" in u or "completion_tokens" in u:
        details = u.get("prompt_tokens_details") or {}
        return Usage(
            input_tokens=as_int(u.get("prompt_tokens")),
            output_tokens=as_int(u.get("completion_tokens")) or 0,
            cache_read_tokens=as_int(details.get("cached_tokens")) if isinstance(details, dict) else None,
        )
    if "input_tokens" in u:  # Responses API
        details = u.get("input_tokens_details") or {}
        return Usage(
            input_tokens=as_int(u.get("input_tokens")),
            output_tokens=as_int(u.get("output_tokens")),
            cache_read_tokens=as_int(details.get("cached_tokens")) if isinstance(details, dict) else None,
        )
    return None


@dataclass
class OpenAIStreamUsage:
    hide_usage_chunk: bool
    usage: Usage = field(default_factory=Usage)
    model: str | None = None

    def on_event(self, event: Event) -> bool:
        if not event.data or event.data == "[DONE]" or "usage" not in event.data:
            if self.model is None and event.data.startswith("{") and '"model"' in event.data[:400]:
                data = event.json()
                if isinstance(data, dict):
                    self.model = data.get("model") if isinstance(data.get("model"), str) else None
            return False
        data = event.json()
        if not isinstance(data, dict):
            return False
        if self.model is None and isinstance(data.get("model"), str):
            self.model = data["model"]
        source = data.get("response") if event.event == "response.completed" else data
        found = usage_of(source)
        if found is not None:
            self.usage = found
        # the chunk that exists only because the gateway asked for usage
        return bool(self.hide_usage_chunk and found is not None and data.get("choices") == [])


class OpenAIFormat:
    key_header = "authorization"

    def __init__(self, name: str) -> None:
        self.name = name

    def upstream_url(self, base: str, path: str, query: str) -> str:
        return f"{base}/{path}" + (f"?{query}" if query else "")

    def client_key(self, headers: dict[str, str], query: str) -> str | None:
        value = headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    def prepare(self, path: str, body: Any, stream: bool) -> tuple[Any, bool]:
        if not stream or not path.rstrip("/").endswith("chat/completions") or not isinstance(body, dict):
            return body, False
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            return body, False
        new_options = dict(options) if isinstance(options, dict) else {}
        new_options["include_usage"] = True
        return {**body, "stream_options": new_options}, True

    def usage_from_json(self, path: str, body: Any) -> Usage:
        return usage_of(body) or Usage()

    def stream_usage(self, path: str, hide_usage_chunk: bool) -> OpenAIStreamUsage:
        return OpenAIStreamUsage(hide_usage_chunk)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "gateway_error", "param": None, "code": status}}


def dumps(body: Any) -> bytes:
    """Compact JSON (orjson: a tenth of the stdlib's time on large bodies, which matters on the event loop)."""
    return orjson.dumps(body)
