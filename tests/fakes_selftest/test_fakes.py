"""The fakes speak the real wire formats: the official SDKs, pointed straight at them, must work."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from harness.fakes import (
    FakeServer,
    Usage,
    anthropic_app,
    anthropic_usage,
    chat_usage,
    count_words,
    expected_reply,
    expected_usage,
    gemini_app,
    openai_app,
    responses_usage,
)

MESSAGES: list[Any] = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hello to me"}]
FORCED = {"input": 100, "output": 20, "cache_read": 1000, "cache_write": 50}
FORCED_HEADER = {"x-fake-usage": json.dumps(FORCED)}
# google-genai's async client (on aiohttp when installed) subclasses aiohttp.ClientSession, which aiohttp frowns upon
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")


@pytest.fixture(scope="module")
def oai() -> Iterator[FakeServer]:
    with FakeServer(openai_app("/v1")) as srv:
        yield srv


@pytest.fixture(scope="module")
def ant() -> Iterator[FakeServer]:
    with FakeServer(anthropic_app()) as srv:
        yield srv


@pytest.fixture(scope="module")
def gem() -> Iterator[FakeServer]:
    with FakeServer(gemini_app()) as srv:
        yield srv


@pytest.fixture
async def oai_client(oai: FakeServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=oai.url + "/v1", api_key="k", max_retries=0) as client:
        yield client


@pytest.fixture
async def ant_client(ant: FakeServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=ant.url, api_key="k", max_retries=0) as client:
        yield client


@pytest.fixture
async def gem_client(gem: FakeServer) -> AsyncIterator[Any]:
    client = genai.Client(api_key="k", http_options=genai_types.HttpOptions(base_url=gem.url))
    async with client.aio as aio:
        yield aio
    client.close()


async def apost(url: str, **kwargs: Any) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(url, **kwargs)


def recorder(srv: FakeServer) -> Any:
    return srv.app.state.recorder


# -- server ---------------------------------------------------------------------------------------------------------


async def test_server_starts_fast_and_works_as_async_context_manager() -> None:
    began = time.monotonic()
    async with FakeServer(openai_app("/openai/v1")) as srv:
        assert time.monotonic() - began < 1
        async with httpx.AsyncClient() as client:
            r = await client.post(srv.url + "/openai/v1/chat/completions", headers={"Authorization": "Bearer g"},
                                  json={"model": "llama", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello from fake-openai: hi"
        assert srv.app.state.requests[-1].key == "g"
        assert srv.app.state.requests is recorder(srv).requests
    with pytest.raises(httpx.ConnectError):
        await apost(srv.url + "/openai/v1/chat/completions")


def test_expected_usage_helpers() -> None:
    body = {"messages": MESSAGES}
    assert count_words(MESSAGES) == 6
    assert expected_reply("openai", body) == "Hello from fake-openai: be brief say hello to me"
    assert expected_usage("openai", body) == Usage(input=6, output=9)
    assert expected_usage("openai", body, FORCED_HEADER) == Usage(**FORCED)
    assert chat_usage(Usage(**FORCED))["prompt_tokens"] == 1100
    gemini_body = {"contents": [{"role": "user", "parts": [{"text": "a b"}, {"text": "c"}]}]}
    assert expected_usage("gemini", gemini_body).input == 3


# -- OpenAI -----------------------------------------------------------------------------------------------------------


async def test_openai_chat_json(oai: FakeServer, oai_client: openai.AsyncOpenAI) -> None:
    result = await oai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    body = {"messages": MESSAGES}
    assert result.choices[0].message.content == expected_reply("openai", body)
    assert result.usage is not None
    assert result.usage.model_dump(exclude_none=True) == chat_usage(expected_usage("openai", body))
    seen = recorder(oai).last
    assert (seen.method, seen.path, seen.key) == ("POST", "/v1/chat/completions", "k")
    assert seen.headers["authorization"] == "Bearer k" and seen.json["messages"] == MESSAGES


async def test_openai_chat_stream_usage_only_when_asked(oai: FakeServer, oai_client: openai.AsyncOpenAI) -> None:
    stream = await oai_client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                                      stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_reply("openai", {"messages": MESSAGES})
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 6 and chunks[-1].usage.completion_tokens == 9
    assert all(c.usage is None for c in chunks[:-1])
    stream = await oai_client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert all(c.usage is None and c.choices for c in [c async for c in stream])
    raw = _chat(oai, {}, stream=True).text
    assert '"usage"' not in raw and raw.endswith("data: [DONE]\n\n")


async def test_openai_chat_forced_usage_and_tool_call(oai_client: openai.AsyncOpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    result = await oai_client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "weather in Paris?"}], tools=tools,
        extra_headers=FORCED_HEADER)
    assert result.choices[0].finish_reason == "tool_calls"
    call = result.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert result.usage is not None and result.usage.prompt_tokens == 1100
    assert result.usage.prompt_tokens_details is not None and result.usage.prompt_tokens_details.cached_tokens == 1000
    async with oai_client.chat.completions.stream(model="m", messages=[{"role": "user", "content": "weather?"}],
                                                  tools=tools) as stream:
        final = await stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == '{"city": "Paris"}'  # type: ignore[index]


async def test_openai_responses_json_and_stream(oai_client: openai.AsyncOpenAI) -> None:
    body: dict[str, Any] = {"instructions": "be brief", "input": "hello responses"}
    result = await oai_client.responses.create(model="gpt-4.1", **body)
    assert result.output_text == expected_reply("openai-responses", body)
    assert result.usage is not None
    assert result.usage.model_dump(exclude_none=True) == responses_usage(expected_usage("openai-responses", body))
    events = [e async for e in await oai_client.responses.create(model="gpt-4.1", stream=True, **body)]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.usage is not None
    assert events[-1].response.usage.output_tokens == expected_usage("openai-responses", body).output == 7
    async with oai_client.responses.stream(model="gpt-4.1", input="hi", extra_headers=FORCED_HEADER) as stream:
        final = await stream.get_final_response()
    assert final.output_text == "Hello from fake-openai: hi" and final.usage is not None
    assert final.usage.input_tokens == 1100 and final.usage.input_tokens_details.cached_tokens == 1000


async def test_openai_embeddings(oai_client: openai.AsyncOpenAI) -> None:
    result = await oai_client.embeddings.create(model="text-embedding-3-small", input=["one two", "three"])
    assert [d.embedding for d in result.data] == [[2.0, 0.0, 0.5, -0.5], [1.0, 1.0, 0.5, -0.5]]
    assert result.usage.prompt_tokens == 3
    floats = await oai_client.embeddings.create(model="e", input="x", encoding_format="float")
    assert floats.data[0].embedding == [1.0, 0.0, 0.5, -0.5]


async def test_openai_errors(oai: FakeServer, oai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        await oai_client.chat.completions.create(model="m", messages=MESSAGES,
                                                 extra_headers={"x-fake-status": "429", "x-fake-retry-after": "7"})
    assert info.value.status_code == 429 and info.value.response.headers["retry-after"] == "7"
    assert set(info.value.response.json()["error"]) >= {"message", "type", "code"}
    with pytest.raises(openai.InternalServerError):
        await oai_client.chat.completions.create(model="m", messages=MESSAGES, extra_headers={"x-fake-status": "500"})
    r = await apost(oai.url + "/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert recorder(oai).last.key is None


# -- Anthropic ------------------------------------------------------------------------------------------------------


async def test_anthropic_messages_json_and_stream(ant: FakeServer, ant_client: anthropic.AsyncAnthropic) -> None:
    body: dict[str, Any] = {"system": "be brief", "messages": [{"role": "user", "content": "say hello"}]}
    message = await ant_client.messages.create(model="claude-sonnet-4-6", max_tokens=100, **body)
    assert message.content[0].text == expected_reply("anthropic", body)
    assert message.usage.model_dump(include={"input_tokens", "output_tokens", "cache_read_input_tokens",
                                             "cache_creation_input_tokens"}) == anthropic_usage(
        expected_usage("anthropic", body))
    assert recorder(ant).last.key == "k"  # SDK 2.x sends `Authorization: Bearer k`
    async with ant_client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, extra_headers=FORCED_HEADER,
                                          **body) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == expected_reply("anthropic", body)  # type: ignore[union-attr]
    assert (final.usage.input_tokens, final.usage.output_tokens) == (100, 20)
    assert (final.usage.cache_read_input_tokens, final.usage.cache_creation_input_tokens) == (1000, 50)
    assert final.stop_reason == "end_turn"


async def test_anthropic_tool_use_stream(ant_client: anthropic.AsyncAnthropic) -> None:
    tools: Any = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    async with ant_client.messages.stream(model="m", max_tokens=100, tools=tools,
                                          messages=[{"role": "user", "content": "weather in Paris?"}]) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert "input_json" in kinds and "text" in kinds
    assert final.stop_reason == "tool_use"
    assert final.content[1].type == "tool_use" and final.content[1].input == {"city": "Paris"}


async def test_anthropic_errors(ant: FakeServer, ant_client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.InternalServerError) as info:
        await ant_client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                                         extra_headers={"x-fake-status": "503"})
    assert info.value.status_code == 503 and info.value.body["type"] == "error"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError) as limited:
        await ant_client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "x"}],
                                         extra_headers={"x-fake-status": "429"})
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    r = await apost(ant.url + "/v1/messages", json={"model": "m", "messages": []})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


# -- Gemini -----------------------------------------------------------------------------------------------------------


async def test_gemini_generate_and_stream(gem: FakeServer, gem_client: Any) -> None:
    result = await gem_client.models.generate_content(model="gemini-2.5-flash", contents="four words right here")
    body = {"contents": [{"role": "user", "parts": [{"text": "four words right here"}]}]}
    assert result.text == expected_reply("gemini", body)
    usage = result.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (4, 7, 11)
    seen = recorder(gem).last
    # google-genai 3.x defaults to api_version "v1"; the fake serves /v1beta and /v1 alike
    assert seen.path.endswith("/models/gemini-2.5-flash:generateContent") and seen.key == "k"
    chunks = [c async for c in await gem_client.models.generate_content_stream(
        model="gemini-2.5-flash", contents="stream me", config={"http_options": {"headers": FORCED_HEADER}})]
    assert "".join(c.text for c in chunks) == "Hello from fake-gemini: stream me"
    assert recorder(gem).last.query == "alt=sse"
    final = chunks[-1].usage_metadata
    assert final.prompt_token_count == 1100 and final.cached_content_token_count == 1000
    assert final.candidates_token_count == 20


async def test_gemini_function_call(gem_client: Any) -> None:
    tool = genai_types.Tool(function_declarations=[genai_types.FunctionDeclaration(name="get_weather")])
    result = await gem_client.models.generate_content(model="gemini-2.5-flash", contents="weather in Paris?",
                                                      config=genai_types.GenerateContentConfig(tools=[tool]))
    assert result.function_calls[0].name == "get_weather" and result.function_calls[0].args == {"city": "Paris"}


async def test_gemini_errors_and_query_key(gem: FakeServer, gem_client: Any) -> None:
    with pytest.raises(genai_errors.ServerError) as info:
        await gem_client.models.generate_content(model="gemini-2.5-flash", contents="x",
                                                 config={"http_options": {"headers": {"x-fake-status": "500"}}})
    assert info.value.code == 500 and info.value.status == "INTERNAL"
    with pytest.raises(genai_errors.ClientError) as limited:
        await gem_client.models.generate_content(model="gemini-2.5-flash", contents="x",
                                                 config={"http_options": {"headers": {"x-fake-status": "429"}}})
    assert limited.value.status == "RESOURCE_EXHAUSTED"
    url = gem.url + "/v1beta/models/g:generateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    assert (await apost(url, json=body)).json()["error"]["status"] == "UNAUTHENTICATED"
    assert (await apost(url + "?key=q", json=body)).status_code == 200 and recorder(gem).last.key == "q"
    streamed = (await apost(gem.url + "/v1beta/models/g:streamGenerateContent?key=q", json=body)).json()
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in streamed) == "Hello from fake-gemini: hi"


# -- failure injection ----------------------------------------------------------------------------------------------


def _chat(srv: FakeServer, headers: dict[str, str], stream: bool = False) -> httpx.Response:
    return httpx.post(srv.url + "/v1/chat/completions", headers={"Authorization": "Bearer k", **headers},
                      json={"model": "m", "messages": MESSAGES, "stream": stream})


def test_fail_times_then_succeed(oai: FakeServer) -> None:
    headers = {"x-fake-fail-times": "2", "x-fake-key": "retry-1"}
    assert [_chat(oai, headers).status_code for _ in range(4)] == [503, 503, 200, 200]
    assert _chat(oai, {"x-fake-fail-times": "1", "x-fake-key": "retry-2"}).status_code == 503


def test_fail_status_and_only_model(oai: FakeServer) -> None:
    headers = {"x-fake-fail-times": "1", "x-fake-key": "retry-3", "x-fake-fail-status": "500"}
    assert [_chat(oai, headers).status_code for _ in range(2)] == [500, 200]
    only = {"x-fake-status": "500", "x-fake-only-model": "other"}
    assert _chat(oai, only).status_code == 200  # _chat asks for model "m"
    assert _chat(oai, {**only, "x-fake-only-model": "m"}).status_code == 500


def test_delay_before_first_byte(oai: FakeServer) -> None:
    began = time.monotonic()
    assert _chat(oai, {"x-fake-delay-ms": "300"}).status_code == 200
    assert time.monotonic() - began >= 0.3
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(oai.url + "/v1/chat/completions", headers={"Authorization": "Bearer k", "x-fake-delay-ms": "500"},
                   json={"model": "m", "messages": MESSAGES}, timeout=0.1)


@pytest.mark.parametrize("provider", ["openai", "anthropic", "gemini"])
def test_cut_stream_drops_connection(provider: str, oai: FakeServer, ant: FakeServer, gem: FakeServer) -> None:
    cases: dict[str, tuple[str, dict[str, str], dict[str, Any]]] = {
        "openai": (oai.url + "/v1/chat/completions", {"authorization": "Bearer k"}, {"messages": MESSAGES}),
        "anthropic": (ant.url + "/v1/messages", {"x-api-key": "k"}, {"messages": MESSAGES[1:], "max_tokens": 5}),
        "gemini": (gem.url + "/v1beta/models/g:streamGenerateContent?alt=sse", {"x-goog-api-key": "k"},
                   {"contents": [{"parts": [{"text": "a b c"}]}]}),
    }
    url, headers, body = cases[provider]
    received: list[str] = []
    headers["x-fake-cut-after"] = "2"
    with pytest.raises(httpx.RemoteProtocolError), httpx.stream(
            "POST", url, json={"model": "m", "stream": True, **body}, headers=headers) as r:
        assert r.status_code == 200
        received.extend(line for line in r.iter_lines() if line.startswith("data:"))
    assert len(received) == 2


async def test_cut_stream_surfaces_in_sdk(oai_client: openai.AsyncOpenAI, ant_client: anthropic.AsyncAnthropic) -> None:
    stream = await oai_client.chat.completions.create(model="m", messages=MESSAGES, stream=True,
                                                      extra_headers={"x-fake-cut-after": "3"})
    seen = []
    with pytest.raises(openai.APIConnectionError) as cut:
        async for chunk in stream:
            seen.append(chunk)
    assert len(seen) == 3 and _peer_closed(cut.value)
    with pytest.raises(Exception) as ant_cut:  # the SDK lets its transport's (httpx2) error through
        async with ant_client.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}],
                                              extra_headers={"x-fake-cut-after": "4"}) as ant_stream:
            await ant_stream.get_final_message()
    assert _peer_closed(ant_cut.value)


def _peer_closed(exc: BaseException | None) -> bool:
    """An incomplete-body error somewhere in the cause chain (the SDKs use httpx or httpx2)."""
    while exc is not None:
        if type(exc).__name__ == "RemoteProtocolError":
            return True
        exc = exc.__cause__
    return False


def test_large_output_is_streamed_in_chunks(oai: FakeServer, ant: FakeServer) -> None:
    size = 4 * 1024 * 1024
    headers = {"Authorization": "Bearer k", "x-fake-output-bytes": str(size)}
    with httpx.stream("POST", oai.url + "/v1/chat/completions", headers=headers,
                      json={"model": "m", "messages": MESSAGES}) as r:
        assert "content-length" not in r.headers
        raw = b"".join(r.iter_raw())
    payload = json.loads(raw)
    assert len(payload["padding"]) == size and payload["usage"]["prompt_tokens"] == 6
    with httpx.stream("POST", ant.url + "/v1/messages", headers={"x-api-key": "k", "x-fake-output-bytes": "200000"},
                      json={"model": "m", "stream": True, "max_tokens": 5, "messages": MESSAGES[1:]}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert events[-1] == 'data: {"type": "message_stop"}' and sum(map(len, events)) > 200000


def test_recorder_clear(oai: FakeServer) -> None:
    rec = recorder(oai)
    _chat(oai, {"X-Custom-Header": "Yes"})
    assert rec.last.headers["x-custom-header"] == "Yes" and rec.last.raw.startswith(b"{")
    rec.clear()
    assert rec.requests == [] and oai.app.state.requests == []
