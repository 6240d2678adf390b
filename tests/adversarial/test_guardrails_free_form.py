"""Guardrails see every text a model reads (found by an adversarial review): inside free-form JSON — a tool
call's input, a function's response, schemas — a key that names an identifier elsewhere (`data`, `id`, `status`)
holds text, a key is text, a number is text; and an endpoint forwarded as bytes is forwarded as the body that was
checked (a key sent twice was one value to the scanner and another to the provider)."""
from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.adversarial.conftest import HostileStack

EMAIL = "alice.smith@example.org"
SETTING = {"guardrails": {"prompt": {"pii.*": "redact", "secret.*": "redact"}}}


def luhn_card() -> str:
    base = "453957876362148"
    for d in "0123456789":
        digits = base + d
        total = 0
        for i, ch in enumerate(reversed(digits)):
            n = int(ch)
            if i % 2:
                n = n * 2 - 9 if n > 4 else n * 2
            total += n
        if total % 10 == 0:
            return digits
    raise AssertionError


CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("gemini functionResponse.response.data", "google-ai-studio",
     {"contents": [
         {"role": "user", "parts": [{"text": "who is the customer?"}]},
         {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"q": "customer"}}}]},
         {"role": "user", "parts": [{"functionResponse": {"name": "lookup",
                                                          "response": {"data": f"customer email {EMAIL}"}}}]}]},
     EMAIL),
    ("gemini functionResponse.response.status", "google-ai-studio",
     {"contents": [
         {"role": "user", "parts": [{"text": "who is the customer?"}]},
         {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {"q": "customer"}}}]},
         {"role": "user", "parts": [{"functionResponse": {"name": "lookup",
                                                          "response": {"status": f"found {EMAIL}"}}}]}]},
     EMAIL),
    ("anthropic tool_use input key 'id'", "anthropic",
     {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [
         {"role": "user", "content": "look him up"},
         {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup",
                                            "input": {"id": EMAIL}}]},
         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]},
     EMAIL),
    ("anthropic tool_use input, email as a dict key", "anthropic",
     {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [
         {"role": "user", "content": "look him up"},
         {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "lookup",
                                            "input": {EMAIL: "primary"}}]},
         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]},
     EMAIL),
    ("anthropic tool_use input, card as a JSON number", "anthropic",
     {"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [
         {"role": "user", "content": "charge it"},
         {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "charge",
                                            "input": {"card": int(luhn_card())}}]},
         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}]},
     luhn_card()),
    ("openai chat: tool schema enum under 'type'-free key 'detail'", "openai",
     {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {
          "type": "object", "properties": {"to": {"type": "string", "enum": [EMAIL]}}}}}]},
     EMAIL),
]

PATHS = {"google-ai-studio": "google-ai-studio/v1beta/models/gemini-2.5-flash:generateContent",
         "anthropic": "anthropic/v1/messages", "openai": "openai/chat/completions"}


@pytest.mark.parametrize(("case", "provider", "body", "secret"), CASES, ids=[c[0] for c in CASES])
async def test_prompt_redaction_reaches_every_text(hostile: HostileStack, case: str, provider: str,
                                                   body: dict[str, Any], secret: str) -> None:
    _, base = hostile.new_gateway(credits_usd="50", **SETTING)
    hostile.clear()
    async with httpx.AsyncClient(timeout=30) as client:
        await client.post(f"{base}/{PATHS[provider]}", json=body)
    requests = hostile.recorder(provider).requests
    assert requests, "nothing reached the provider"
    raw = requests[-1].raw.decode()
    assert secret not in raw, f"{case}: the provider received the unredacted {secret}"


async def test_control_plain_text_is_redacted(hostile: HostileStack) -> None:
    _, base = hostile.new_gateway(credits_usd="50", **SETTING)
    hostile.clear()
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/openai/chat/completions", json={
            "model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": f"mail {EMAIL}"}]})
    assert answer.status_code == 200
    assert EMAIL not in hostile.recorder("openai").requests[-1].raw.decode()


async def test_a_tool_call_in_an_answer_is_checked_like_text(hostile: HostileStack) -> None:
    _, base = hostile.new_gateway(credits_usd="50", guardrails={"response": {"pii.*": "redact"}})
    content = {"content": [{"type": "tool_use", "id": "toolu_1", "name": "send", "input": {"data": EMAIL}}]}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(f"{base}/anthropic/v1/messages", json={
            "model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-fake-extra": json.dumps(content)})
    assert answer.status_code == 200 and EMAIL not in answer.text


@pytest.mark.parametrize("twice", [True, False])
async def test_a_body_forwarded_as_bytes_is_the_body_that_was_checked(hostile: HostileStack, twice: bool) -> None:
    """An endpoint the gateway does not understand, on the client's own key: forwarded as bytes, and those bytes are
    the parsed and checked body (sent twice, `contents` was scanned as its last copy and forwarded with its first)."""
    _, base = hostile.new_gateway(credits_usd="50", **SETTING)
    hostile.clear()
    first = '"contents":[{"role":"user","parts":[{"text":"mail ' + EMAIL + '"}]}]'
    raw = ("{" + first + (',"contents":[{"role":"user","parts":[{"text":"hi"}]}]' if twice else "") + "}").encode()
    async with httpx.AsyncClient(timeout=30) as client:
        await client.post(f"{base}/google-ai-studio/v1beta/models/gemini-2.5-flash:predict", content=raw,
                          headers={"content-type": "application/json", "x-goog-api-key": "client-own-key"})
    seen = hostile.recorder("google-ai-studio").requests
    assert seen and EMAIL.encode() not in seen[-1].raw
