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


def test_an_image_part_skips_only_its_inline_data() -> None:
    data = "A" * 100_000
    note = "n" * 50_000
    chat = {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}", "detail": note}}]}]}
    assert IMAGE_TOKENS + len(note) <= input_token_bound(chat) < IMAGE_TOKENS + len(note) + 300
    beside = {"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}, "extra": note}]}]}
    assert input_token_bound(beside) >= IMAGE_TOKENS + len(note)
    url = "https://example.com/" + "p" * 50_000  # a URL is counted: only inline data is an image's
    assert input_token_bound({"messages": [{"role": "user", "content": [
        {"type": "input_image", "image_url": url}]}]}) >= IMAGE_TOKENS + len(url)
    gemini = {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": data}, "note": note}]}]}
    assert IMAGE_TOKENS + len(note) <= input_token_bound(gemini) < IMAGE_TOKENS + len(note) + 300


@pytest.mark.parametrize("where", [
    lambda x: {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "image_url": {"type": "string"}, "notes": {"type": "string", "description": x}}}}}]},
    lambda x: {"messages": [{"role": "assistant", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {"image_url": "https://e/p.png", "notes": x}}]}]},
    lambda x: {"contents": [{"parts": [{"functionResponse": {"name": "f", "response": {
        "image_url": "https://e/p.png", "description": x}}}]}]},
    lambda x: {"contents": [{"parts": [{"functionCall": {"name": "f", "args": {
        "type": "image", "source": {"type": "base64", "data": x}}}}]}]},
    lambda x: {"response_format": {"type": "json_schema", "json_schema": {"schema": {
        "type": "image_url", "image_url": {"url": "data:image/png;base64," + x}}}}},
    lambda x: {"metadata": {"inlineData": {"mimeType": "image/png", "data": x}}},
])
def test_nothing_is_an_image_inside_free_form_json(where: object) -> None:
    """Tool schemas, a tool call's input or arguments, a function's response, response schemas and metadata reach
    the model as text: a key that looks like an image's there must not hide the text beside or inside it."""
    text = "lorem " * 10_000
    assert callable(where)
    assert input_token_bound(where(text)) >= len(text)
