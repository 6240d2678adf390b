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

IMAGE_TOKENS = 6_000
MESSAGE_OVERHEAD = 16
BASE_OVERHEAD = 64
_IMAGE_KEYS = {"image_url", "inlineData", "inline_data", "fileData", "file_data", "input_image"}


def _is_image(node: dict[str, Any]) -> bool:
    if node.get("type") in ("image", "image_url", "input_image"):
        return True
    return bool(_IMAGE_KEYS & node.keys())


def input_token_bound(body: Any) -> int:
    total = BASE_OVERHEAD
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if _is_image(node):
                total += IMAGE_TOKENS
                continue
            if "role" in node:
                total += MESSAGE_OVERHEAD
            for key, value in node.items():
                total += len(key.encode())
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str):
            total += len(node.encode())
        elif isinstance(node, bool) or node is None:
            total += 5
        elif isinstance(node, int | float):
            total += len(repr(node))
    return total
