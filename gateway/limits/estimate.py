"""The worst case a request can cost, in tokens, before it is sent.

Input: a byte-level BPE token is at least one byte of UTF-8, so the number of input tokens is at most the number
of bytes of text the provider turns into tokens. We count every string *and every key* of the JSON body (tool
schemas reach the model as text, keys included), numbers by their decimal length, plus a per-message allowance
for the role markers providers add (`MESSAGE_OVERHEAD`) and a fixed `BASE_OVERHEAD`. An image counts
`IMAGE_TOKENS` (above what OpenAI, Anthropic and Gemini charge for one image at their maximum size) instead of
the bytes of its URL or base64 data. The bound is loose for text, which is the point: it is never below.

Output: the request's own limit — `max_tokens`, `max_completion_tokens`, `max_output_tokens` or Gemini's
`generationConfig.maxOutputTokens` — times the number of choices asked (`n`, `candidateCount`); without a
limit, the gateway's `default_max_output_tokens`. Only a request without a limit can cost more than reserved
(the gateway setting `inject_max_tokens` closes that gap). Embeddings produce no output tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE_TOKENS = 6_000
MESSAGE_OVERHEAD = 16
BASE_OVERHEAD = 64
_IMAGE_KEYS = {"image_url", "inlineData", "inline_data", "fileData", "file_data", "input_image"}
_LIMIT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


@dataclass(frozen=True)
class TokenBound:
    input_tokens: int
    output_tokens: int
    output_limit_given: bool


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


def output_token_bound(body: Any, default_max_output_tokens: int, *, embeddings: bool = False) -> tuple[int, bool]:
    if embeddings:
        return 0, True
    limit: Any = None
    choices: Any = 1
    if isinstance(body, dict):
        for key in _LIMIT_KEYS:
            if body.get(key) is not None:
                limit = body[key]
                break
        config = body.get("generationConfig") or body.get("generation_config")
        if limit is None and isinstance(config, dict):
            limit = config.get("maxOutputTokens", config.get("max_output_tokens"))
            choices = config.get("candidateCount", config.get("candidate_count", 1))
        else:
            choices = body.get("n", 1)
    given = isinstance(limit, int) and not isinstance(limit, bool) and limit > 0
    tokens = limit if given else default_max_output_tokens
    if isinstance(choices, bool) or not isinstance(choices, int) or choices < 1:
        choices = 1
    return tokens * choices, given


def token_bound(body: Any, default_max_output_tokens: int, *, embeddings: bool = False) -> TokenBound:
    output, given = output_token_bound(body, default_max_output_tokens, embeddings=embeddings)
    return TokenBound(input_token_bound(body), output, given)
