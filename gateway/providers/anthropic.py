"""The Anthropic Messages wire format.

Usage: `input_tokens` excludes cache reads and writes, so prompt tokens = input + cache_read + cache_write
(what pricing expects); `cache_creation.ephemeral_1h_input_tokens` is the part written for an hour;
`server_tool_use.web_search_requests` the searches billed per request. Streams report input and cache tokens in
`message_start` and the output count in `message_delta` (cumulative: its fields replace, never add).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from gateway.exchange import Usage
from gateway.providers.base import as_int
from gateway.providers.sse import Event


def usage_of(u: Any, previous: Usage | None = None) -> Usage | None:
    """A `usage` object over what an earlier event of the same stream reported (`message_delta` is cumulative:
    the fields it carries replace those of `message_start`, the others stay)."""
    if not isinstance(u, dict):
        return None
    prev = previous or Usage()
    read = as_int(u.get("cache_read_input_tokens"))
    write = as_int(u.get("cache_creation_input_tokens"))
    read = read if read is not None else prev.cache_read_tokens
    write = write if write is not None else prev.cache_write_tokens
    base = as_int(u.get("input_tokens"))
    total_in = base + (read or 0) + (write or 0) if base is not None else prev.input_tokens
    creation = u.get("cache_creation")
    write_1h = as_int(creation.get("ephemeral_1h_input_tokens")) if isinstance(creation, dict) else None
    tools = u.get("server_tool_use")
    searches = as_int(tools.get("web_search_requests")) if isinstance(tools, dict) else None
    out = as_int(u.get("output_tokens"))
    speed = "fast" if u.get("speed") == "fast" else prev.service_tier  # fast mode has its own prices
    return replace(
        prev, input_tokens=total_in, output_tokens=out if out is not None else prev.output_tokens,
        cache_read_tokens=read, cache_write_tokens=write,
        cache_write_1h_tokens=write_1h if write_1h is not None else prev.cache_write_1h_tokens,
        web_searches=searches if searches is not None else prev.web_searches, service_tier=speed,
    )


@dataclass
class AnthropicStreamUsage:
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    final: bool = False  # message_delta came: the output count is final
    # every content block so far has stopped: what is left may be only `message_delta`, whose output count (hidden
    # and redacted thinking, server tools included) is what the provider bills
    finished: bool = False

    def on_event(self, event: Event) -> bool:
        if event.event == "content_block_stop":
            self.finished = True
        elif event.event == "content_block_start":
            self.finished = False
        elif event.event == "message_start":
            data = event.json()
            message = data.get("message") if isinstance(data, dict) else None
            if isinstance(message, dict):
                self.model = message.get("model") if isinstance(message.get("model"), str) else self.model
                self.usage = usage_of(message.get("usage"), self.usage) or self.usage
        elif event.event == "message_delta":
            data = event.json()
            if isinstance(data, dict):
                found = usage_of(data.get("usage"), self.usage)
                if found is not None:
                    self.usage, self.final = found, True
        return False


class AnthropicFormat:
    name = "anthropic"
    key_header = "x-api-key"

    def upstream_url(self, base: str, path: str, query: str) -> str:
        return f"{base}/{path}" + (f"?{query}" if query else "")

    def client_key(self, headers: dict[str, str], query: str) -> str | None:
        key = headers.get("x-api-key")
        if key:
            return key
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}

    def prepare(self, path: str, body: Any, stream: bool) -> tuple[Any, bool]:
        return body, False

    def usage_from_json(self, path: str, body: Any) -> Usage:
        return (usage_of(body.get("usage")) if isinstance(body, dict) else None) or Usage()

    def stream_usage(self, path: str, hide_usage_chunk: bool) -> AnthropicStreamUsage:
        return AnthropicStreamUsage()

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"type": "error", "error": {"type": "gateway_error", "message": message}}
