"""The Google AI Studio (Gemini) wire format: `v1beta/models/{model}:generateContent` and
`:streamGenerateContent` (SSE with `alt=sse`). Usage is `usageMetadata`; `promptTokenCount` already includes
`cachedContentTokenCount`; thinking tokens (`thoughtsTokenCount`) are billed as output.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs

from gateway.exchange import Usage
from gateway.providers.base import as_int
from gateway.providers.sse import Event


def _modality(details: Any, modality: str) -> int | None:
    if not isinstance(details, list):
        return None
    counts = [as_int(d.get("tokenCount")) for d in details if isinstance(d, dict) and d.get("modality") == modality]
    return sum(c for c in counts if c is not None) if counts else None


def usage_of(data: Any) -> Usage | None:
    """`usageMetadata`, whole: the prompt count includes cached tokens; tool-use prompt tokens (the results of
    Google Search, code execution...) and thinking tokens come on top of the prompt and candidate counts and are
    billed as input and output; the AUDIO parts of the prompt and of the cache have their own rates; a grounded
    answer (`groundingMetadata` with search queries) is one billed search."""
    if not isinstance(data, dict) or not isinstance(data.get("usageMetadata"), dict):
        return None
    u = data["usageMetadata"]
    out = as_int(u.get("candidatesTokenCount"))
    thoughts = as_int(u.get("thoughtsTokenCount"))
    if out is not None or thoughts is not None:
        out = (out or 0) + (thoughts or 0)
    prompt = as_int(u.get("promptTokenCount"))
    tool = as_int(u.get("toolUsePromptTokenCount"))
    if tool:
        prompt = (prompt or 0) + tool
    return Usage(
        input_tokens=prompt, output_tokens=out, cache_read_tokens=as_int(u.get("cachedContentTokenCount")),
        input_audio_tokens=_modality(u.get("promptTokensDetails"), "AUDIO") or None,
        cache_audio_read_tokens=_modality(u.get("cacheTokensDetails"), "AUDIO"),
        output_audio_tokens=_modality(u.get("candidatesTokensDetails"), "AUDIO") or None,
        output_image_tokens=_modality(u.get("candidatesTokensDetails"), "IMAGE") or None,
        reasoning_tokens=thoughts or None, tool_prompt_tokens=tool or None, web_searches=_grounded(data),
    )


def _grounded(data: dict[str, Any]) -> int | None:
    candidates = data.get("candidates")
    if not isinstance(candidates, list):
        return None
    for candidate in candidates:
        grounding = candidate.get("groundingMetadata") if isinstance(candidate, dict) else None
        if isinstance(grounding, dict) and grounding.get("webSearchQueries"):
            return 1
    return None


@dataclass
class GeminiStreamUsage:
    """Each chunk's `usageMetadata` is cumulative: the last one is the call's. Grounding comes in a chunk of its
    own and counts once."""

    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    final: bool = False  # a chunk with a finishReason came
    searches: int | None = None

    def on_event(self, event: Event) -> bool:
        if "groundingMetadata" in event.data or "finishReason" in event.data:
            data = event.json()
            if isinstance(data, dict):
                self.searches = _grounded(data) or self.searches
                self.final = self.final or '"finishReason"' in event.data
        if "usageMetadata" in event.data:
            data = event.json()
            found = usage_of(data)
            if found is not None:
                self.usage = replace(found, web_searches=found.web_searches or self.searches)
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
