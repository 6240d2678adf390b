"""gateway/providers/compat.py alone, no network: Chat Completions requests translated to Anthropic Messages and
Gemini generateContent, their answers and streamed events translated back (text, tool calls, finish reasons,
usage), and the translators every call carries (native routes pass through)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway.errors import CompatError, CompatUpstreamError
from gateway.exchange import Call
from gateway.providers.base import Native, Translator
from gateway.providers.call import parse_call
from gateway.providers.compat import (
    AnthropicCompat,
    GeminiCompat,
    OpenAICompat,
    compat_endpoint,
    compat_translator,
    from_anthropic_response,
    from_gemini_response,
    to_anthropic_request,
    to_gemini_request,
)
from gateway.providers.sse import Event, SSEParser
from gateway.providers.target import adapter_for

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "weather of a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CONVERSATION = [
    {"role": "system", "content": "be brief"},
    {"role": "developer", "content": [{"type": "text", "text": "no jokes"}]},
    {"role": "user", "content": "weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    {"role": "user", "content": "and tomorrow?"},
]


def sse(event: str | None, data: Any) -> Event:
    """One event as the provider sends it."""
    text = json.dumps(data)
    raw = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
    [parsed] = SSEParser().feed(raw.encode())
    return parsed


def compat_call(provider: str, model: str, body: dict[str, Any]) -> Call:
    """The call as the compat endpoint parses it."""
    path, query = compat_endpoint(provider, model, body.get("stream") is True)
    return parse_call(method="POST", provider=provider, path=path, query=query, body=body, raw_body=b"",
                      default_output=4096, inject_limit=False, compat=True, model=model)


def chunks(sent: bytes) -> list[Any]:
    """What the client reads: the data of each event (`[DONE]` kept as the string)."""
    out: list[Any] = []
    for event in SSEParser().feed(sent):
        out.append(event.data if event.data == "[DONE]" else json.loads(event.data))
    return out


# -- requests --------------------------------------------------------------------------------------------------


def test_anthropic_request_system_turns_tools_and_limits() -> None:
    body = {"messages": CONVERSATION, "tools": [TOOL], "tool_choice": "required", "temperature": 0.3, "top_p": 0.9,
            "stop": "END", "stream": True}
    out = to_anthropic_request(body, "claude-sonnet-4-6", 123)
    assert out["model"] == "claude-sonnet-4-6" and out["max_tokens"] == 123 and out["stream"] is True
    assert out["system"] == "be brief\n\nno jokes"
    assert out["temperature"] == 0.3 and out["top_p"] == 0.9 and out["stop_sequences"] == ["END"]
    assert [t["role"] for t in out["messages"]] == ["user", "assistant", "user"]  # tool result + user merged
    assert out["messages"][1]["content"] == [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                              "input": {"city": "Paris"}}]
    assert out["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
                                             {"type": "text", "text": "and tomorrow?"}]
    assert out["tools"] == [{"name": "get_weather", "description": "weather of a city",
                             "input_schema": TOOL["function"]["parameters"]}]  # type: ignore[index]
    assert out["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}),
    ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    (None, None),
])
def test_anthropic_tool_choice(choice: Any, expected: Any) -> None:
    body = {"messages": [{"role": "user", "content": "x"}], "tools": [TOOL], "tool_choice": choice}
    assert to_anthropic_request(body, "m", 10).get("tool_choice") == expected


def test_anthropic_tool_choice_none_sends_no_tools() -> None:
    out = to_anthropic_request({"messages": [{"role": "user", "content": "x"}], "tools": [TOOL],
                                "tool_choice": "none"}, "m", 10)
    assert "tools" not in out and "tool_choice" not in out


def test_images_by_url_and_base64() -> None:
    content = [{"type": "text", "text": "what is this"},
               {"type": "image_url", "image_url": {"url": "https://example.com/cat.png?size=2"}},
               {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,QUJD"}}]
    body = {"messages": [{"role": "user", "content": content}]}
    blocks = to_anthropic_request(body, "m", 10)["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png?size=2"}}
    assert blocks[2] == {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "QUJD"}}
    parts = to_gemini_request(body, None)["contents"][0]["parts"]
    assert parts[1] == {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png?size=2"}}
    assert parts[2] == {"inlineData": {"mimeType": "image/jpeg", "data": "QUJD"}}


def test_gemini_request_system_turns_tools_and_config() -> None:
    body = {"messages": CONVERSATION, "tools": [TOOL], "tool_choice": "auto", "temperature": 0.2, "top_p": 0.5,
            "stop": ["END", "STOP"]}
    out = to_gemini_request(body, 50)
    assert out["systemInstruction"] == {"parts": [{"text": "be brief\n\nno jokes"}]}
    assert out["generationConfig"] == {"maxOutputTokens": 50, "temperature": 0.2, "topP": 0.5,
                                       "stopSequences": ["END", "STOP"]}
    assert [c["role"] for c in out["contents"]] == ["user", "model", "user"]
    assert out["contents"][1]["parts"] == [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]
    assert out["contents"][2]["parts"] == [
        {"functionResponse": {"name": "get_weather", "response": {"content": "sunny"}}}, {"text": "and tomorrow?"}]
    assert out["tools"] == [{"functionDeclarations": [{"name": "get_weather", "description": "weather of a city",
                                                       "parameters": TOOL["function"]["parameters"]}]}]  # type: ignore[index]
    assert out["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


def test_gemini_request_without_a_limit_sends_no_config() -> None:
    assert "generationConfig" not in to_gemini_request({"messages": [{"role": "user", "content": "x"}]}, None)


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0]"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": 5}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "code"}]}, "tools[0]"),
])
def test_what_cannot_be_translated_is_refused_naming_the_parameter(body: dict[str, Any], param: str) -> None:
    for translate in (lambda: to_anthropic_request(body, "m", 10), lambda: to_gemini_request(body, 10)):
        with pytest.raises(CompatError) as refused:
            translate()
        assert refused.value.param == param


def test_gemini_tool_result_must_follow_its_call() -> None:
    body = {"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}
    with pytest.raises(CompatError, match="names no earlier tool call"):
        to_gemini_request(body, None)


# -- whole answers ---------------------------------------------------------------------------------------------


def test_anthropic_answer_with_text_tool_call_and_usage() -> None:
    answer = {"id": "msg_1", "stop_reason": "tool_use",
              "content": [{"type": "text", "text": "Let me look."},
                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
              "usage": {"input_tokens": 10, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 2,
                        "output_tokens": 7}}
    out = from_anthropic_response(answer, "claude-sonnet-4-6")
    assert out["id"] == "chatcmpl-msg_1" and out["object"] == "chat.completion" and out["model"] == "claude-sonnet-4-6"
    [choice] = out["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look."
    assert choice["message"]["tool_calls"] == [{"id": "toolu_1", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]
    assert out["usage"] == {"prompt_tokens": 17, "completion_tokens": 7, "total_tokens": 24,
                            "prompt_tokens_details": {"cached_tokens": 5}}


def test_anthropic_answer_only_tool_calls_has_null_content() -> None:
    out = from_anthropic_response({"content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                                   "stop_reason": "tool_use"}, "m")
    assert out["choices"][0]["message"]["content"] is None


def test_gemini_answer_with_tool_calls_thoughts_and_usage() -> None:
    answer = {"responseId": "r1", "candidates": [{"finishReason": "STOP", "content": {"parts": [
        {"text": "thinking...", "thought": True}, {"text": "Here."},
        {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]}}],
        "usageMetadata": {"promptTokenCount": 12, "cachedContentTokenCount": 4, "candidatesTokenCount": 6,
                          "thoughtsTokenCount": 3}}
    out = from_gemini_response(answer, "gemini-2.5-flash")
    assert out["id"] == "chatcmpl-r1"
    [choice] = out["choices"]
    assert choice["message"]["content"] == "Here."  # thoughts are not the answer
    assert choice["message"]["tool_calls"] == [{"id": "call_0", "type": "function", "function": {
        "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}}]
    assert choice["finish_reason"] == "tool_calls"
    assert out["usage"] == {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21,
                            "prompt_tokens_details": {"cached_tokens": 4}}


@pytest.mark.parametrize(("reason", "finish"), [("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
                                                ("STOP", "stop")])
def test_gemini_finish_reasons(reason: str, finish: str) -> None:
    out = from_gemini_response({"candidates": [{"finishReason": reason, "content": {"parts": [{"text": "x"}]}}]}, "m")
    assert out["choices"][0]["finish_reason"] == finish


# -- streams ---------------------------------------------------------------------------------------------------


def relay(translator: Translator, events: list[Event]) -> list[Any]:
    """What the client reads of a whole stream: every event through `feed`, then `finish`."""
    sent = b"".join(translator.feed(event) for event in events) + translator.finish(b"")
    return chunks(sent)


ANTHROPIC_STREAM = [
    sse("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": {
        "input_tokens": 10, "cache_read_input_tokens": 2, "cache_creation_input_tokens": 1, "output_tokens": 1}}}),
    sse("content_block_start", {"type": "content_block_start", "index": 0,
                                "content_block": {"type": "text", "text": ""}}),
    sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": "Let me "}}),
    sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                "delta": {"type": "text_delta", "text": "look."}}),
    sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
    sse("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
    sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                "delta": {"type": "input_json_delta", "partial_json": '{"city": '}}),
    sse("content_block_delta", {"type": "content_block_delta", "index": 1,
                                "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}}),
    sse("ping", {"type": "ping"}),
    sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                          "usage": {"output_tokens": 20}}),
    sse("message_stop", {"type": "message_stop"}),
]


def test_anthropic_stream_text_tool_call_finish_and_usage() -> None:
    out = relay(AnthropicCompat("claude-sonnet-4-6", stream=True, include_usage=True), ANTHROPIC_STREAM)
    assert out[-1] == "[DONE]"
    objects = out[:-1]
    assert {o["object"] for o in objects} == {"chat.completion.chunk"} and len({o["id"] for o in objects}) == 1
    assert all(o["model"] == "claude-sonnet-4-6" for o in objects)
    deltas = [o["choices"][0]["delta"] for o in objects if o["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}  # the first chunk says the role, once
    assert sum("role" in d for d in deltas) == 1
    assert "".join(d.get("content") or "" for d in deltas) == "Let me look."
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert calls[0] == {"index": 0, "id": "toolu_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert all(c["index"] == 0 for c in calls)
    finishes = [o["choices"][0]["finish_reason"] for o in objects if o["choices"]]
    assert [f for f in finishes if f] == ["tool_calls"]
    assert objects[-1]["choices"] == [] and objects[-1]["usage"] == {
        "prompt_tokens": 13, "completion_tokens": 20, "total_tokens": 33, "prompt_tokens_details": {"cached_tokens": 2}}


def test_without_include_usage_the_stream_ends_with_done_only() -> None:
    out = relay(AnthropicCompat("m", stream=True, include_usage=False), ANTHROPIC_STREAM)
    assert out[-1] == "[DONE]" and all(o["choices"] for o in out[:-1])


def test_a_stream_error_event_ends_the_stream_with_an_openai_error() -> None:
    translator = AnthropicCompat("m", stream=True, include_usage=True)
    translator.feed(ANTHROPIC_STREAM[0])
    with pytest.raises(CompatUpstreamError) as failed:
        translator.feed(sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}))
    [last] = chunks(translator.failed(failed.value))
    assert last["error"]["message"] == "anthropic: busy" and last["error"]["type"] == "api_error"
    gemini = GeminiCompat("m", stream=True, include_usage=False)
    with pytest.raises(CompatUpstreamError, match="google-ai-studio: quota"):
        gemini.feed(sse(None, {"error": {"code": 429, "message": "quota"}}))


def test_events_without_a_json_object_send_nothing() -> None:
    translator = GeminiCompat("m", stream=True, include_usage=False)
    [keep_alive] = SSEParser().feed(b": keep-alive\n\n")
    assert translator.feed(keep_alive) == b"" and translator.feed(sse(None, [1, 2])) == b""


def test_gemini_stream_text_tool_calls_finish_and_usage() -> None:
    events = [
        sse(None, {"candidates": [{"content": {"parts": [{"text": "Looking"}]}}]}),
        sse(None, {"candidates": [{"content": {"parts": [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
            {"functionCall": {"name": "get_time", "args": {}}}]}}]}),
        sse(None, {"candidates": [{"finishReason": "STOP", "content": {"parts": []}}],
                   "usageMetadata": {"promptTokenCount": 8, "cachedContentTokenCount": 3,
                                     "candidatesTokenCount": 5, "thoughtsTokenCount": 2}}),
    ]
    out = relay(GeminiCompat("gemini-2.5-flash", stream=True, include_usage=True), events)
    assert out[-1] == "[DONE]"
    objects = out[:-1]
    deltas = [o["choices"][0]["delta"] for o in objects if o["choices"]]
    assert deltas[0] == {"role": "assistant", "content": "Looking"}
    calls = [c for d in deltas for c in d.get("tool_calls", [])]
    assert [(c["index"], c["id"], c["function"]["name"]) for c in calls] == [
        (0, "call_0", "get_weather"), (1, "call_1", "get_time")]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert [o["choices"][0]["finish_reason"] for o in objects if o["choices"] and o["choices"][0]["finish_reason"]] \
        == ["tool_calls"]  # a call was made: OpenAI's reason, whatever Gemini said
    assert objects[-1]["usage"] == {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15,
                                    "prompt_tokens_details": {"cached_tokens": 3}}


def test_gemini_stream_of_text_finishes_with_its_reason() -> None:
    events = [sse(None, {"candidates": [{"content": {"parts": [{"text": "Hi"}]}}]}),
              sse(None, {"candidates": [{"finishReason": "MAX_TOKENS", "content": {"parts": [{"text": "!"}]}}]})]
    out = relay(GeminiCompat("m", stream=True, include_usage=False), events)
    deltas = [o["choices"][0] for o in out[:-1]]
    assert "".join(d["delta"].get("content", "") for d in deltas) == "Hi!"
    assert deltas[-1]["finish_reason"] == "length"


# -- the translators a target carries ----------------------------------------------------------------------------


@pytest.mark.parametrize(("provider", "stream", "path", "query"), [
    ("anthropic", False, "v1/messages", ""),
    ("anthropic", True, "v1/messages", ""),
    ("google-ai-studio", False, "v1beta/models/gemini-2.5-flash:generateContent", ""),
    ("google-ai-studio", True, "v1beta/models/gemini-2.5-flash:streamGenerateContent", "alt=sse"),
    ("grok", True, "v1/chat/completions", ""),
    ("openai", False, "chat/completions", ""),
    ("custom-vllm", False, "chat/completions", ""),
])
def test_compat_endpoints(provider: str, stream: bool, path: str, query: str) -> None:
    assert compat_endpoint(provider, "gemini-2.5-flash", stream) == (path, query)


def test_translators_translate_the_call_with_its_resolved_limit() -> None:
    body = {"model": "anthropic/claude-sonnet-4-6", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 77}
    call = compat_call("anthropic", "claude-sonnet-4-6", body)
    translator = compat_translator("anthropic", "claude-sonnet-4-6", adapter_for("anthropic"), stream=False,
                                   include_usage=False)
    assert isinstance(translator, AnthropicCompat) and translator.reshapes
    sent, hide = translator.request(call)
    assert sent["max_tokens"] == 77 and sent["model"] == "claude-sonnet-4-6" and not hide
    gemini_body = {**body, "model": "google-ai-studio/gemini-2.5-flash"}
    gemini = compat_translator("google-ai-studio", "gemini-2.5-flash", adapter_for("google-ai-studio"),
                               stream=False, include_usage=False)
    sent, _ = gemini.request(compat_call("google-ai-studio", "gemini-2.5-flash", gemini_body))
    assert sent["generationConfig"] == {"maxOutputTokens": 77}


def test_a_request_of_an_unexpected_shape_is_a_compat_error_on_messages() -> None:
    body = {"model": "anthropic/m", "messages": [{"role": "assistant", "content": "x", "tool_calls": ["not a dict"]}]}
    translator = AnthropicCompat("m", stream=False, include_usage=False)
    with pytest.raises(CompatError) as refused:
        translator.request(compat_call("anthropic", "m", body))
    assert refused.value.param == "messages" and "AttributeError" in str(refused.value)


def test_translated_answers_and_errors_are_openai_shaped() -> None:
    translator = AnthropicCompat("m", stream=False, include_usage=False)
    answer = translator.answer({"id": "msg_1", "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn"})
    assert answer["choices"][0]["message"]["content"] == "hi"
    error = json.loads(translator.provider_error("anthropic", 429, b'{"error": {"message": "slow down"}}'))
    assert error == {"error": {"message": "anthropic: slow down", "type": "rate_limit_error", "param": None,
                               "code": None}}
    assert translator.error_body(400, "bad", "messages[0]") == {
        "error": {"message": "bad", "type": "invalid_request_error", "param": "messages[0]", "code": None}}
    assert translator.stream_headers([(b"content-type", b"text/event-stream; charset=utf-8")]) == [
        (b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def test_openai_format_providers_get_the_bare_model_and_their_answers_pass_through() -> None:
    body = {"model": "groq/llama-3.3-70b-versatile", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    translator = compat_translator("groq", "llama-3.3-70b-versatile", adapter_for("groq"), stream=True,
                                   include_usage=False)
    assert isinstance(translator, OpenAICompat)
    sent, hide = translator.request(compat_call("groq", "llama-3.3-70b-versatile", body))
    assert sent["model"] == "llama-3.3-70b-versatile"
    assert hide and sent["stream_options"] == {"include_usage": True}  # asked for the gateway, hidden from the client
    event = sse(None, {"choices": [{"delta": {"content": "hi"}}]})
    assert translator.feed(event) == event.raw and translator.finish(b"data: {") == b""
    assert translator.provider_error("groq", 400, b"raw") == b"raw"
    assert translator.answer({"any": "thing"}) == {"any": "thing"}
    assert translator.stream_headers([(b"content-type", b"text/event-stream"), (b"content-length", b"9")]) == [
        (b"content-type", b"text/event-stream")]


def test_native_calls_pass_through() -> None:
    translator = Native(adapter_for("anthropic"))
    assert not translator.reshapes
    event = sse("message_start", {"type": "message_start"})
    assert translator.feed(event) == event.raw and translator.finish(b"data: {") == b"data: {"
    headers = [(b"content-type", b"text/event-stream"), (b"content-length", b"9")]
    assert translator.stream_headers(headers) == headers
    assert translator.error_body(502, "anthropic timed out", None) == {
        "type": "error", "error": {"type": "gateway_error", "message": "anthropic timed out"}, "success": False}


def test_which_answers_are_relayed_as_streams() -> None:
    sse_answer = httpx.Response(200, headers={"content-type": "text/event-stream"})
    json_answer = httpx.Response(200, headers={"content-type": "application/json"})
    native = Native(adapter_for("openai"))
    assert native.streams(sse_answer) and not native.streams(json_answer)  # what the provider sent
    streaming = AnthropicCompat("m", stream=True, include_usage=False)
    assert streaming.streams(json_answer)  # what the client asked for...
    assert not streaming.streams(httpx.Response(429))  # ...unless the provider refused: an error, read whole
    assert not AnthropicCompat("m", stream=False, include_usage=False).streams(sse_answer)
    assert not OpenAICompat(adapter_for("openai"), "m", stream=False).streams(sse_answer)
