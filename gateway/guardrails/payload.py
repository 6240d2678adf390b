"""The text of a JSON body: every string a model reads or writes, whatever the provider's shape (OpenAI chat and
responses, Anthropic messages, Gemini generateContent, embeddings, compat). Walking every string, rather than a
list of known fields per shape, means a new content type or field cannot slip past. Left alone: strings under
keys that hold identifiers, model names, enumerations or binary data (`SKIP`), which the provider does not read as
text and which a rewrite would break (a base64 image, a thinking signature, a tool call id) — but only in the
provider's own structure. Inside free-form JSON the model reads as text (a tool call's input or arguments, a
function's response, schemas, metadata: gateway/shapes.py `FREE_FORM`) nothing is left alone: every
string, every key and every number is checked, since there `{"data": "alice@example.org"}`, `{"alice@…": 1}` and
`{"card": 4539578763621486}` are all text to the model. A number found to hold something is replaced by its
redacted text."""

from __future__ import annotations

from typing import Any

from gateway.guardrails.scanner import Rules, redact
from gateway.shapes import FREE_FORM, TOOL_CALLS

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
    return _walk(value, rules, found, skip or set(), 0, False)


def _text(value: str, rules: Rules, found: dict[str, int]) -> str:
    text, seen = redact(value, rules)
    for category, count in seen.items():
        found[category] = found.get(category, 0) + count
    return text


def _walk(value: Any, rules: Rules, found: dict[str, int], skip: set[tuple[int, str]], depth: int,
          free: bool) -> Any:
    if isinstance(value, str):
        return _text(value, rules, found)
    if depth >= MAX_DEPTH:
        return value
    if isinstance(value, dict):
        if free:
            return _walk_free(value, rules, found, skip, depth)
        changed: dict[str, Any] | None = None
        tool_call = value.get("type") in TOOL_CALLS
        for key, item in value.items():
            if key in SKIP or (id(value), key) in skip or not isinstance(item, str | dict | list):
                continue
            inner = isinstance(item, dict | list) and (key in FREE_FORM or (tool_call and key == "input"))
            new = _walk(item, rules, found, skip, depth + 1, inner)
            if new is not item:
                if changed is None:
                    changed = dict(value)
                changed[key] = new
        return value if changed is None else changed
    if isinstance(value, list):
        out: list[Any] | None = None
        for i, item in enumerate(value):
            if free and _number(item):
                new = _scalar(item, rules, found)
            elif not isinstance(item, str | dict | list):
                continue
            else:
                new = _walk(item, rules, found, skip, depth + 1, free)
            if new is not item:
                if out is None:
                    out = list(value)
                out[i] = new
        return value if out is None else out
    return value


def _walk_free(value: dict[str, Any], rules: Rules, found: dict[str, int], skip: set[tuple[int, str]],
               depth: int) -> dict[str, Any]:
    """A dict inside free-form JSON: its keys, strings and numbers are all text to the model."""
    changed = False
    out: dict[str, Any] = {}
    for key, item in value.items():
        new_key = _text(key, rules, found) if isinstance(key, str) else key
        if _number(item):
            new = _scalar(item, rules, found)
        elif isinstance(item, str | dict | list):
            new = _walk(item, rules, found, skip, depth + 1, True)
        else:
            new = item
        changed = changed or new is not item or new_key != key
        out[new_key] = new
    return out if changed else value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar(value: Any, rules: Rules, found: dict[str, int]) -> Any:
    """A number in free-form JSON: as the model reads it; replaced by its redacted text when something is in it."""
    text = str(value)
    redacted = _text(text, rules, found)
    return value if redacted == text else redacted
