"""The text of a JSON body: every string a model reads or writes, whatever the provider's shape (OpenAI chat and
responses, Anthropic messages, Gemini generateContent, embeddings, compat). Walking every string, rather than a
list of known fields per shape, means a new content type or field cannot slip past. Left alone: strings under
keys that hold identifiers, model names, enumerations or binary data (`SKIP`), which the provider does not read as
text and which a rewrite would break (a base64 image, a thinking signature, a tool call id)."""

from __future__ import annotations

from typing import Any

from gateway.guardrails.scanner import Rules, redact

SKIP = frozenset({
    "model", "role", "type", "object", "id", "tool_call_id", "call_id", "item_id", "response_id",
    "previous_response_id", "system_fingerprint", "finish_reason", "stop_reason", "finishReason", "status",
    "image_url", "input_image", "data", "file_data", "file_id", "fileData", "inlineData", "inline_data", "mimeType",
    "mime_type", "media_type", "signature", "thoughtSignature", "thought_signature", "encrypted_content",
    "service_tier", "reasoning_effort", "tool_choice", "modelVersion", "responseId", "cache_control", "detail",
    "logprobs", "top_logprobs", "sequence_number",
})
MAX_DEPTH = 128


def redact_json(value: Any, rules: Rules, found: dict[str, int],
                skip: set[tuple[int, str]] | None = None) -> Any:
    """`value` with every text string redacted: the same object where nothing changed, a copy along the path to
    each change. `found` collects the categories seen; `skip` holds (id of a dict, key) pairs to leave alone."""
    return _walk(value, rules, found, skip or set(), 0)


def _walk(value: Any, rules: Rules, found: dict[str, int], skip: set[tuple[int, str]], depth: int) -> Any:
    if isinstance(value, str):
        text, seen = redact(value, rules)
        for category, count in seen.items():
            found[category] = found.get(category, 0) + count
        return text
    if depth >= MAX_DEPTH:
        return value
    if isinstance(value, dict):
        changed: dict[str, Any] | None = None
        for key, item in value.items():
            if key in SKIP or (id(value), key) in skip or not isinstance(item, str | dict | list):
                continue
            new = _walk(item, rules, found, skip, depth + 1)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if isinstance(value, list):
        out: list[Any] | None = None
        for i, item in enumerate(value):
            if not isinstance(item, str | dict | list):
                continue
            new = _walk(item, rules, found, skip, depth + 1)
            if new is not item:
                if out is None:
                    out = list(value)
                out[i] = new
        return value if out is None else out
    return value
