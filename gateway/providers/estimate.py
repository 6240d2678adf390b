"""The worst case a request can cost, in tokens, before it is sent.

Input: a byte-level BPE token is at least one byte of UTF-8, so the number of input tokens is at most the number
of bytes of text the provider turns into tokens. We count every string *and every key* of the JSON body (tool
schemas reach the model as text, keys included), numbers by their decimal length, plus a per-message allowance
for the role markers providers add (`MESSAGE_OVERHEAD`) and a fixed `BASE_OVERHEAD`. An image counts
`IMAGE_TOKENS` (above what OpenAI, Anthropic and Gemini charge for one image at their maximum size) instead of
the bytes of its URL or base64 data. The bound is loose for text, which is the point: it is never below.

Output: the call's resolved output limit times its choices (gateway/providers/output_limit.py, the one rule
that reads every limit field); without a limit, the gateway's `default_max_output_tokens`. Only a request without
a limit can cost more than reserved (the gateway setting `inject_max_tokens` closes that gap). Embeddings
produce no output tokens.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import NestedTooDeep

IMAGE_TOKENS = 6_000
MESSAGE_OVERHEAD = 16
BASE_OVERHEAD = 64
_IMAGE_TYPES = ("image", "image_url", "input_image")


def _is_image(node: dict[str, Any]) -> bool:
    kind = node.get("type")
    if kind is not None and kind in _IMAGE_TYPES:
        return True
    if "image_url" in node or "input_image" in node:
        return True
    # Gemini parts: only images have a fixed token count; audio and video count by their length, so their bytes
    # (far more than their tokens) are walked like text
    inline = node.get("inlineData") or node.get("inline_data") or node.get("fileData") or node.get("file_data")
    if isinstance(inline, dict):
        mime = inline.get("mimeType") or inline.get("mime_type")
        return isinstance(mime, str) and mime.startswith("image/")
    return False


def _scalar(value: Any) -> int:
    """The bound of a string, number, boolean or null (containers are walked)."""
    if type(value) is str:
        return len(value) if value.isascii() else len(value.encode())
    if value is None or value is True or value is False:
        return 5
    return len(repr(value))


def input_token_bound(body: Any, max_depth: int | None = None) -> int:
    """The input bound of a parsed JSON body, in one iterative walk (no recursion, whatever the nesting).
    With `max_depth`, a body nested deeper raises NestedTooDeep."""
    total = BASE_OVERHEAD
    limit = max_depth if max_depth is not None else 1 << 62
    stack: list[tuple[Any, int]] = [(body, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            raise NestedTooDeep(limit)
        if type(node) is dict:
            if _is_image(node):
                total += IMAGE_TOKENS
                continue
            if "role" in node:
                total += MESSAGE_OVERHEAD
            for key, value in node.items():
                total += len(key) if key.isascii() else len(key.encode())
                if type(value) is dict or type(value) is list:
                    push((value, depth + 1))
                else:
                    total += _scalar(value)
        elif type(node) is list:
            for value in node:
                if type(value) is dict or type(value) is list:
                    push((value, depth + 1))
                else:
                    total += _scalar(value)
        else:
            total += _scalar(node)
    return total
