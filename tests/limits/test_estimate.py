from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.providers import output_limit
from gateway.providers.estimate import BASE_OVERHEAD, IMAGE_TOKENS, input_token_bound
from gateway.providers.output_limit import LimitError, resolve


def _bound(fields: output_limit.LimitFields, body: dict[str, object], default: int = 4096) -> tuple[int, bool]:
    limit = resolve(fields, body, default)
    return limit.tokens * limit.choices, limit.given


def test_output_limits_by_provider_field() -> None:
    assert _bound(output_limit.MESSAGES, {"max_tokens": 100}) == (100, True)
    assert _bound(output_limit.CHAT, {"max_completion_tokens": 50, "n": 3}) == (150, True)
    assert _bound(output_limit.RESPONSES, {"max_output_tokens": 70}) == (70, True)
    gemini = {"generationConfig": {"maxOutputTokens": 30, "candidateCount": 2}}
    assert _bound(output_limit.GEMINI, gemini) == (60, True)
    assert _bound(output_limit.CHAT, {"messages": []}) == (4096, False)
    assert _bound(output_limit.CHAT, {"max_tokens": None, "max_completion_tokens": None}) == (4096, False)
    with pytest.raises(LimitError):
        resolve(output_limit.CHAT, {"max_tokens": True}, 10)


def test_images_count_a_fixed_bound_not_their_bytes() -> None:
    data = "A" * 100_000
    body = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}]}]}
    assert input_token_bound(body) < IMAGE_TOKENS + 200
    anthropic = {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}]}]}
    assert input_token_bound(anthropic) < IMAGE_TOKENS + 200


@given(st.text(min_size=0, max_size=2000))
def test_text_bound_is_at_least_its_utf8_bytes(text: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    assert input_token_bound(body) >= len(text.encode()) + BASE_OVERHEAD


def test_tool_schemas_count_keys_and_values() -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}}}}]
    bare = input_token_bound({"messages": []})
    assert input_token_bound({"messages": [], "tools": tools}) - bare >= len(json.dumps(tools)) // 2
