"""The OpenAI wire format: OpenAI itself, Groq, xAI (grok) and operator-registered custom servers.

Streams: Chat Completions only report usage when asked (`stream_options.include_usage`), in a last chunk with
empty `choices`. When a client streams without asking, the router adds the option upstream and this adapter
hides that extra chunk from the client (it never asked for it); Groq also reports it in `x_groq.usage`. The
Responses API reports usage in its `response.completed` event (`response.incomplete` when the output limit cut
it, `response.failed`); embeddings in the JSON body. What each field means for the bill: docs/cost-conformance.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.exchange import Usage
from gateway.providers.base import as_int
from gateway.providers.sse import Event


def _details(u: dict[str, Any], name: str) -> dict[str, Any]:
    details = u.get(name)
    return details if isinstance(details, dict) else {}


def usage_of(data: Any, provider: str = "openai") -> Usage | None:
    """Usage of a chat completion, a Responses API response, or an embeddings response, whole.

    Chat Completions: `prompt_tokens` includes cached and audio input; `completion_tokens` includes reasoning and
    audio output, except on xAI, which reports reasoning tokens apart (they are billed as output, so they are
    added). Groq streams put the usage in `x_groq.usage`. The response's `service_tier` is the tier that served
    it. Responses API: `input_tokens` / `output_tokens` with their details, and one web search per
    `web_search_call` output item."""
    if not isinstance(data, dict):
        return None
    u = data.get("usage")
    if not isinstance(u, dict):
        groq = data.get("x_groq")
        u = groq.get("usage") if isinstance(groq, dict) else None
        if not isinstance(u, dict):
            return None
    tier = data.get("service_tier") if isinstance(data.get("service_tier"), str) else None
    if "prompt_tokens" in u or "completion_tokens" in u:
        prompt, completion = _details(u, "prompt_tokens_details"), _details(u, "completion_tokens_details")
        output = as_int(u.get("completion_tokens")) or 0
        reasoning = as_int(completion.get("reasoning_tokens"))
        if provider == "grok" and reasoning:
            output += reasoning  # xAI: reasoning tokens are not inside completion_tokens
        return Usage(
            input_tokens=as_int(u.get("prompt_tokens")),
            output_tokens=output,
            cache_read_tokens=as_int(prompt.get("cached_tokens")),
            input_audio_tokens=as_int(prompt.get("audio_tokens")) or None,
            output_audio_tokens=as_int(completion.get("audio_tokens")) or None,
            reasoning_tokens=reasoning or None,
            service_tier=tier,
        )
    if "input_tokens" in u:  # Responses API
        inp, out = _details(u, "input_tokens_details"), _details(u, "output_tokens_details")
        items = data.get("output")
        searches = sum(1 for item in items if isinstance(item, dict) and item.get("type") == "web_search_call") \
            if isinstance(items, list) else 0
        return Usage(
            input_tokens=as_int(u.get("input_tokens")),
            output_tokens=as_int(u.get("output_tokens")),
            cache_read_tokens=as_int(inp.get("cached_tokens")),
            reasoning_tokens=as_int(out.get("reasoning_tokens")) or None,
            web_searches=searches or None,
            service_tier=tier,
        )
    return None


_NO_FINISH = re.compile(r'"finish_reason"\s*:\s*null')

# Responses API stream events that carry the final response (and its usage): done, cut at the output limit, failed
RESPONSE_END_EVENTS = ("response.completed", "response.incomplete", "response.failed")


@dataclass
class OpenAIStreamUsage:
    hide_usage_chunk: bool
    provider: str = "openai"
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    final: bool = False  # the provider sent its final usage
    finished: bool = False  # a choice finished, or a Responses output item: what is left may be only the usage
    failed: bool = False  # a Responses stream that ended in `response.failed` (billed, never cached)

    def on_event(self, event: Event) -> bool:
        if event.event.startswith("response."):
            # Responses: between an item's `.done` and the next item's `.added` the answer may be complete, and only
            # `response.completed` (with the usage, hidden reasoning and searches included) may be left
            if event.event == "response.output_item.done":
                self.finished = True
            elif event.event == "response.output_item.added":
                self.finished = False
            elif event.event == "response.failed":
                self.failed = True
        elif not self.finished and '"finish_reason"' in event.data and not _NO_FINISH.search(event.data):
            self.finished = True  # the answer is complete: only its usage (reasoning included) is still to come
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
        source = data.get("response") if event.event in RESPONSE_END_EVENTS else data
        found = usage_of(source, self.provider)
        if found is not None:
            self.usage = found
            self.final = True
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
        return usage_of(body, self.name) or Usage()

    def stream_usage(self, path: str, hide_usage_chunk: bool) -> OpenAIStreamUsage:
        return OpenAIStreamUsage(hide_usage_chunk, self.name)

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": {"message": message, "type": "gateway_error", "param": None, "code": status}}


def dumps(body: Any) -> bytes:
    """Compact JSON (orjson: a tenth of the stdlib's time on large bodies, which matters on the event loop)."""
    return orjson.dumps(body)
