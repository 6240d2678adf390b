"""The Google AI Studio (Gemini) wire format: `v1beta/models/{model}:generateContent` and
`:streamGenerateContent` (SSE with `alt=sse`). Usage is `usageMetadata`; `promptTokenCount` already includes
`cachedContentTokenCount`; thinking tokens (`thoughtsTokenCount`) are billed as output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from gateway.exchange import Usage
from gateway.providers.base import as_int
from gateway.providers.sse import Event


def usage_of(data: Any) -> Usage | None:
    if not isinstance(data, dict) or not isinstance(data.get("usageMetadata"), dict):
        return None
    u = data["usageMetadata"]
    out = as_int(u.get("candidatesTokenCount"))
    thoughts = as_int(u.get("thoughtsTokenCount"))
    if out is not None or thoughts is not None:
        out = (out or 0) + (thoughts or 0)
    return Usage(as_int(u.get("promptTokenCount")), out, as_int(u.get("cachedContentTokenCount")), None)


@dataclass
class GeminiStreamUsage:
    usage: Usage = field(default_factory=Usage)
    model: str | None = None

    def on_event(self, event: Event) -> bool:
        if "usageMetadata" in event.data:
            data = event.json()
            found = usage_of(data)
            if found is not None:
                self.usage = found
            if isinstance(data, dict) and isinstance(data.get("modelVersion"), str):
                self.model = data["modelVersion"]
        return False


class GoogleFormat:
    name = "google-ai-studio"
    key_header = "x-goog-api-key"

    def upstream_url(self, base: str, path: str, query: str) -> str:
        return f"{base}/{path}" + (f"?{query}" if query else "")

    def client_key(self, headers: dict[str, str], query: str) -> str | None:
        key = headers.get("x-goog-api-key")
        if key:
            return key
        values = parse_qs(query).get("key")
        return values[0] if values else None

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-goog-api-key": key}

    def prepare(self, path: str, body: Any, stream: bool) -> tuple[Any, bool]:
        return body, False

    def usage_from_json(self, path: str, body: Any) -> Usage:
        if isinstance(body, list):  # streamGenerateContent without alt=sse: a JSON array of chunks
            found = [u for u in (usage_of(item) for item in body) if u is not None]
            return found[-1] if found else Usage()
        return usage_of(body) or Usage()

    def stream_usage(self, path: str, hide_usage_chunk: bool) -> GeminiStreamUsage:
        return GeminiStreamUsage()

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"code": status, "message": message, "status": "GATEWAY_ERROR"}}
