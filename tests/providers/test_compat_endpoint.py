"""The unified /compat/chat/completions endpoint with the real OpenAI SDK, across providers."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import openai
import pytest

from gateway.exchange import Usage
from gateway.pricing import cost_of
from tests.providers.conftest import Stack

WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                                 "parameters": {"type": "object",
                                                                "properties": {"city": {"type": "string"}}}}}
MODELS = {"openai": "openai/gpt-4o-mini", "anthropic": "anthropic/claude-sonnet-4-6",
          "google-ai-studio": "google-ai-studio/gemini-2.5-flash", "groq": "groq/llama-3.3-70b-versatile"}


def client(stack: Stack, account: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base(account) + "/compat", api_key="sk-client-key")


@pytest.mark.parametrize("provider", list(MODELS))
def test_compat_json_across_providers(stack: Stack, provider: str) -> None:
    account = stack.new_account()
    raw = client(stack, account).chat.completions.with_raw_response.create(
        model=MODELS[provider], max_tokens=50, temperature=0.2, stop=["END"],
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello compat world"}])
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("Hello from fake-")
    assert completion.choices[0].finish_reason == "stop"
    assert raw.headers["cf-aig-provider"] == provider
    sent = stack.recorder(provider).last
    assert sent.key == "sk-client-key"
    if provider == "anthropic":
        assert sent.json["system"] == "be brief" and sent.json["max_tokens"] == 50
        assert sent.json["stop_sequences"] == ["END"]
    if provider == "google-ai-studio":
        assert sent.json["systemInstruction"]["parts"][0]["text"] == "be brief"
        assert sent.json["generationConfig"] == {"maxOutputTokens": 50, "temperature": 0.2, "stopSequences": ["END"]}
    u = completion.usage
    bare = MODELS[provider].split("/", 1)[1]
    expected = cost_of(provider, bare, Usage(u.prompt_tokens, u.completion_tokens, 0, 0))
    assert Decimal(raw.headers["cf-aig-cost"]) == expected


@pytest.mark.parametrize("provider", list(MODELS))
def test_compat_stream_across_providers(stack: Stack, provider: str) -> None:
    account = stack.new_account()
    chunks = list(client(stack, account).chat.completions.create(
        model=MODELS[provider], stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream from compat"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("Hello from fake-")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 3
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]


@pytest.mark.parametrize("provider", ["anthropic", "google-ai-studio"])
def test_compat_tool_calls_round_trip(stack: Stack, provider: str) -> None:
    account = stack.new_account()
    c = client(stack, account)
    messages = [{"role": "user", "content": "what is the weather in Paris?"}]
    first = c.chat.completions.create(model=MODELS[provider], messages=messages, tools=[WEATHER_TOOL])
    call = first.choices[0].message.tool_calls[0]
    assert first.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"}]
    second = c.chat.completions.create(model=MODELS[provider], messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content
    sent = stack.recorder(provider).last.json
    if provider == "anthropic":
        assert sent["messages"][1]["content"][-1]["type"] == "tool_use"
        assert sent["messages"][2]["content"][0] == {"type": "tool_result", "tool_use_id": call.id,
                                                     "content": "sunny, 21C"}
    else:
        assert sent["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"
    streamed = list(c.chat.completions.create(model=MODELS[provider], stream=True, tools=[WEATHER_TOOL],
                                              messages=[{"role": "user", "content": "weather in Paris?"}]))
    args = "".join(tc.function.arguments or "" for ch in streamed if ch.choices
                   for tc in (ch.choices[0].delta.tool_calls or []))
    assert json.loads(args) == {"city": "Paris"}


def test_compat_images_by_url_and_base64(stack: Stack) -> None:
    account = stack.new_account()
    content = [{"type": "text", "text": "what is this"},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
               {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}}]
    c = client(stack, account)
    c.chat.completions.create(model=MODELS["anthropic"], messages=[{"role": "user", "content": content}])
    blocks = stack.recorder("anthropic").last.json["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}
    assert blocks[2]["source"] == {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}
    c.chat.completions.create(model=MODELS["google-ai-studio"], messages=[{"role": "user", "content": content}])
    parts = stack.recorder("google-ai-studio").last.json["contents"][0]["parts"]
    assert parts[1] == {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png"}}
    assert parts[2] == {"inlineData": {"mimeType": "image/jpeg", "data": "QUJD"}}


def test_compat_errors_in_openai_shape(stack: Stack) -> None:
    account = stack.new_account()
    c = client(stack, account)
    with pytest.raises(openai.BadRequestError) as bad:
        c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert "provider" in bad.value.message
    with pytest.raises(openai.RateLimitError) as limited:
        c.chat.completions.create(model=MODELS["anthropic"], messages=[{"role": "user", "content": "x"}],
                                  extra_headers={"x-fake-status": "429"}, timeout=5, )
    assert "anthropic" in limited.value.message
    with pytest.raises(openai.BadRequestError) as bad_role:
        c.chat.completions.create(model=MODELS["google-ai-studio"], messages=[{"role": "wizard", "content": "x"}])
    assert bad_role.value.body["param"] == "messages[0].role"  # type: ignore[index]
    r = httpx.post(stack.base(account) + "/compat/chat/completions", content=b"not json",
                   headers={"Authorization": "Bearer k"})
    assert r.status_code == 400
