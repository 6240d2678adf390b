from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.limits.estimate import BASE_OVERHEAD, IMAGE_TOKENS, input_token_bound, output_token_bound, token_bound


def test_output_limits_by_provider_field() -> None:
    assert output_token_bound({"max_tokens": 100}, 4096) == (100, True)
    assert output_token_bound({"max_completion_tokens": 50, "n": 3}, 4096) == (150, True)
    assert output_token_bound({"max_output_tokens": 70}, 4096) == (70, True)
    gemini = {"generationConfig": {"maxOutputTokens": 30, "candidateCount": 2}}
    assert output_token_bound(gemini, 4096) == (60, True)
    assert output_token_bound({"messages": []}, 4096) == (4096, False)
    assert output_token_bound({"max_tokens": True}, 10) == (10, False)
    assert output_token_bound({"input": "x"}, 4096, embeddings=True) == (0, True)


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
    assert token_bound({"max_tokens": 5}, 10).output_tokens == 5
