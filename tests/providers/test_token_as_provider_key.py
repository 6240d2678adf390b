"""Cloudflare's documented SDK set-ups put the gateway token where the provider key goes. The gateway recognises
its tokens there (the `sgk_` prefix), verifies them, never forwards them, and bills the call as if no provider key
had been sent: here, unified billing with the gateway's own keys. Checked with the real SDKs, on what the fake
providers received."""

from __future__ import annotations

import time

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from tests.providers.conftest import ADMIN, Stack

GATEWAY_KEYS = {"openai": "gw-key-openai", "anthropic": "gw-key-anthropic",
                "google-ai-studio": "gw-key-google-ai-studio"}


def gateway_token(stack: Stack, account: str) -> str:
    with stack.admin() as admin:
        answer = admin.post(f"/accounts/{account}/gateways/default/tokens", json={"name": "sdk"})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["result"]["token"])


def nowhere(stack: Stack, token: str) -> None:
    """The token reached no provider: not in any header, path or query the fakes saw."""
    for app in stack.apps.values():
        for seen in app.state.recorder.seen:
            assert token not in seen.path and token not in " ".join(seen.headers.values())


def test_the_four_documented_sdk_set_ups(stack: Stack) -> None:
    account = stack.new_account(credits_usd="5")
    token = gateway_token(stack, account)
    base = stack.base(account)
    for app in stack.apps.values():
        app.state.recorder.clear()

    # OpenAI SDK on the OpenAI route: apiKey = the gateway token
    with openai.OpenAI(base_url=base + "/openai", api_key=token) as chat:  # closed: no socket left to the GC
        answer = chat.chat.completions.with_raw_response.create(model="gpt-4o-mini",
                                                                messages=[{"role": "user", "content": "hi"}])
    assert answer.parse().choices[0].message.content.startswith("Hello")
    assert stack.recorder("openai").last.key == GATEWAY_KEYS["openai"]

    # OpenAI SDK on the compat endpoint, to Anthropic
    with openai.OpenAI(base_url=base + "/compat", api_key=token) as compat:
        translated = compat.chat.completions.create(model="anthropic/claude-haiku-4-5", max_tokens=20,
                                                    messages=[{"role": "user", "content": "hi"}])
    assert translated.choices[0].message.content
    assert stack.recorder("anthropic").last.key == GATEWAY_KEYS["anthropic"]

    # Anthropic SDK with Authorization: Bearer <gateway token>
    with anthropic.Anthropic(base_url=base + "/anthropic", auth_token=token) as claude:
        message = claude.messages.create(model="claude-haiku-4-5", max_tokens=20,
                                         messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text.startswith("Hello")
    assert stack.recorder("anthropic").last.key == GATEWAY_KEYS["anthropic"]

    # google-genai with api_key = the gateway token
    with genai.Client(api_key=token, http_options=genai_types.HttpOptions(
            base_url=base + "/google-ai-studio", api_version="v1beta")) as gemini:
        result = gemini.models.generate_content(model="gemini-2.5-flash", contents="hi there")
    assert result.text.startswith("Hello")
    assert stack.recorder("google-ai-studio").last.key == GATEWAY_KEYS["google-ai-studio"]

    nowhere(stack, token)
    with httpx.Client(base_url=stack.gateway.url + "/admin", headers={"Authorization": f"Bearer {ADMIN}"}) as admin:
        for _ in range(100):  # the log writer batches
            logs = admin.get(f"/accounts/{account}/gateways/default/logs").json()["result"]
            if len(logs) >= 4:
                break
            time.sleep(0.1)
        credits = admin.get(f"/accounts/{account}/credits").json()["result"]
    assert len(logs) == 4 and {row["billing_mode"] for row in logs} == {"unified"}
    assert credits["balance_usd"] != "5.00"  # the account paid, not the client's (absent) provider key


@pytest.mark.parametrize("where", ["authorization", "x-api-key", "x-goog-api-key", "query"])
def test_a_token_that_is_not_this_gateways_is_refused_and_not_forwarded(stack: Stack, where: str) -> None:
    """A value with the token prefix that is not one of this gateway's tokens (another gateway's, a revoked one)
    is 401, never passed to a provider as if it were a key."""
    account = stack.new_account(credits_usd="5")
    other = stack.new_account()
    stranger = gateway_token(stack, other)
    for app in stack.apps.values():
        app.state.recorder.clear()
    value = f"Bearer {stranger}" if where == "authorization" else stranger
    headers = {} if where == "query" else {where: value}
    params = {"key": stranger} if where == "query" else {}
    with httpx.Client(timeout=30) as client:
        answer = client.post(f"{stack.base(account)}/openai/chat/completions", headers=headers, params=params,
                             json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 401 and "gateway token" in answer.text
    nowhere(stack, stranger)
    assert all(not app.state.recorder.seen for app in stack.apps.values())
