"""The six provider routes with the real SDKs pointed at the gateway (base URL and headers only)."""

from __future__ import annotations

from decimal import Decimal

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from gateway.exchange import Usage
from gateway.pricing import cost_of
from harness.fakes import count_words
from tests.eventually import eventually_sync
from tests.providers.conftest import Stack


def test_openai_chat_json_passthrough_key_usage_and_cost(stack: Stack) -> None:
    account = stack.new_account()
    client = openai.OpenAI(base_url=stack.base(account) + "/openai", api_key="sk-client-own")
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "say hello to the gateway"}],
        extra_headers={"cf-aig-metadata": '{"team": "x"}'})
    completion = raw.parse()
    assert completion.choices[0].message.content.startswith("Hello from fake-openai")
    seen = stack.recorder("openai").last
    assert seen.key == "sk-client-own"  # pass-through
    assert not any(h.startswith("cf-aig-") for h in seen.headers)
    assert raw.headers["cf-aig-provider"] == "openai" and raw.headers["cf-aig-model"] == "gpt-4o-mini"
    assert raw.headers["cf-aig-step"] == "0"
    usage = completion.usage
    assert usage.prompt_tokens == 5
    expected = cost_of("openai", "gpt-4o-mini", Usage(usage.prompt_tokens, usage.completion_tokens, 0))
    assert Decimal(raw.headers["cf-aig-cost"]) == expected


def test_openai_stream_hides_the_usage_chunk_it_added(stack: Stack) -> None:
    account = stack.new_account()
    client = openai.OpenAI(base_url=stack.base(account) + "/openai", api_key="sk-client")
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                 messages=[{"role": "user", "content": "stream please"}]))
    assert all(c.choices for c in chunks)  # no extra usage chunk for a client that did not ask
    assert stack.recorder("openai").last.json["stream_options"] == {"include_usage": True}
    asked = list(client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                stream_options={"include_usage": True},
                                                messages=[{"role": "user", "content": "stream please"}]))
    assert asked[-1].usage is not None and asked[-1].usage.prompt_tokens == 2


def test_openai_responses_api_and_embeddings(stack: Stack) -> None:
    account = stack.new_account()
    client = openai.OpenAI(base_url=stack.base(account) + "/openai", api_key="sk-client")
    response = client.responses.create(model="gpt-4o-mini", input="one two three")
    assert response.usage.input_tokens == 3
    streamed = list(client.responses.create(model="gpt-4o-mini", input="one two three", stream=True))
    assert streamed[-1].type == "response.completed"
    emb = client.embeddings.create(model="text-embedding-3-small", input="a b c d")
    assert emb.usage.prompt_tokens == 4


@pytest.mark.parametrize("provider", ["grok", "groq"])
def test_openai_compatible_providers(stack: Stack, provider: str) -> None:
    account = stack.new_account()
    path = "/v1" if provider == "grok" else ""
    client = openai.OpenAI(base_url=stack.base(account) + f"/{provider}{path}", api_key="k-client")
    model = "grok-4" if provider == "grok" else "llama-3.3-70b-versatile"
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content.startswith("Hello from fake-openai")
    assert Decimal(raw.headers["cf-aig-cost"]) > 0
    streamed = list(client.chat.completions.create(model=model, stream=True,
                                                   messages=[{"role": "user", "content": "hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in streamed).startswith("Hello")


def test_custom_provider_registered_by_the_operator(stack: Stack) -> None:
    account = stack.new_account()
    with stack.admin() as admin:
        admin.post(f"/accounts/{account}/gateways", json={"id": "g"})
        assert admin.post(f"/accounts/{account}/gateways/g/custom-providers",
                          json={"slug": "vllm", "base_url": stack.fakes["custom"].url + "/v1"}).status_code == 201
        admin.put(f"/accounts/{account}/gateways/g/prices", json={"prices": [
            {"provider": "custom-vllm", "model": "llama-local", "input_per_mtok": "1000000",
             "output_per_mtok": "2000000"}]})
    client = openai.OpenAI(base_url=stack.base(account, "g") + "/custom-vllm", api_key="local")
    raw = client.chat.completions.with_raw_response.create(model="llama-local",
                                                            messages=[{"role": "user", "content": "a b"}])
    usage = raw.parse().usage
    assert Decimal(raw.headers["cf-aig-cost"]) == usage.prompt_tokens * 1 + usage.completion_tokens * 2
    unknown = httpx.post(stack.base(account, "g") + "/custom-nope/chat/completions", json={"model": "m"})
    assert unknown.status_code == 404


def test_anthropic_messages_json_and_stream_with_cache_tokens(stack: Stack) -> None:
    account = stack.new_account()
    client = anthropic.Anthropic(base_url=stack.base(account) + "/anthropic", api_key="sk-ant-client")
    forced = {"x-fake-usage": '{"input": 100, "output": 20, "cache_read": 1000, "cache_write": 50}'}
    raw = client.messages.with_raw_response.create(model="claude-sonnet-4-6", max_tokens=100,
                                                   messages=[{"role": "user", "content": "hello there"}],
                                                   extra_headers=forced)
    message = raw.parse()
    assert message.content[0].text.startswith("Hello from fake-anthropic")
    assert stack.recorder("anthropic").last.key == "sk-ant-client"
    expected = cost_of("anthropic", "claude-sonnet-4-6", Usage(1150, 20, 1000, 50))
    assert Decimal(raw.headers["cf-aig-cost"]) == expected
    with client.messages.stream(model="claude-sonnet-4-6", max_tokens=100, extra_headers=forced,
                                messages=[{"role": "user", "content": "hello there"}]) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 20 and final.usage.cache_read_input_tokens == 1000


def test_gemini_generate_and_stream(stack: Stack) -> None:
    account = stack.new_account()
    client = genai.Client(api_key="g-client", http_options=genai_types.HttpOptions(
        base_url=stack.base(account) + "/google-ai-studio", api_version="v1beta"))
    result = client.models.generate_content(model="gemini-2.5-flash", contents="four words right here")
    assert result.text.startswith("Hello from fake-gemini")
    assert result.usage_metadata.prompt_token_count == count_words("four words right here")
    assert stack.recorder("google-ai-studio").last.key == "g-client"
    text = "".join(c.text or "" for c in client.models.generate_content_stream(model="gemini-2.5-flash",
                                                                                 contents="stream me"))
    assert text.startswith("Hello from fake-gemini")


def test_stored_key_then_unified_billing(stack: Stack) -> None:
    account = stack.new_account()
    with stack.admin() as admin:
        admin.post(f"/accounts/{account}/gateways", json={"id": "g"})
        admin.post(f"/accounts/{account}/gateways/g/provider-keys", json={"provider": "openai", "key": "sk-stored-1"})
        admin.post(f"/accounts/{account}/gateways/g/provider-keys",
                   json={"provider": "openai", "alias": "b", "key": "sk-stored-b"})
    url = stack.base(account, "g") + "/openai/chat/completions"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(url, json=body).status_code == 200
    assert stack.recorder("openai").last.key == "sk-stored-1"
    assert httpx.post(url, json=body, headers={"cf-aig-byok-alias": "b"}).status_code == 200
    assert stack.recorder("openai").last.key == "sk-stored-b"
    missing = httpx.post(url, json=body, headers={"cf-aig-byok-alias": "zzz"})
    assert missing.status_code == 400 and "alias" in missing.json()["error"]["message"]
    # no key anywhere on the default gateway: unified billing with the gateway's own key, paid from credits
    broke = httpx.post(stack.base(account) + "/openai/chat/completions", json=body)
    assert broke.status_code == 402 and broke.json()["success"] is False
    with stack.admin() as admin:
        admin.post(f"/accounts/{account}/credits/topups", json={"amount_usd": "1.00", "idempotency_key": "k"})
    unified = httpx.post(stack.base(account) + "/openai/chat/completions", json=body)
    assert unified.status_code == 200 and stack.recorder("openai").last.key == "gw-key-openai"
    with stack.admin() as admin:  # the settlement commits after the answer reached the client
        credits = eventually_sync(lambda: admin.get(f"/accounts/{account}/credits").json()["result"],
                                  until=lambda c: Decimal(c["pending_usd"]) == 0, what="the settlement")
    assert Decimal(credits["balance_usd"]) == Decimal("1.00") - Decimal(unified.headers["cf-aig-cost"])
    refused = httpx.post(stack.base(account) + "/openai/chat/completions", json=body,
                         headers={"cf-aig-no-wholesale": "true"})
    assert refused.status_code == 400 and "no-wholesale" in refused.json()["error"]["message"]
    unpriced = httpx.post(stack.base(account) + "/openai/chat/completions",
                          json={**body, "model": "my-unknown-model"})
    assert unpriced.status_code == 400 and "my-unknown-model" in unpriced.json()["error"]["message"]
    byok_unpriced = httpx.post(stack.base(account) + "/openai/chat/completions",
                               json={**body, "model": "my-unknown-model"}, headers={"Authorization": "Bearer sk-x"})
    assert byok_unpriced.status_code == 200 and "cf-aig-cost" not in byok_unpriced.headers


def test_byok_only_gateway_refuses_unified(stack: Stack) -> None:
    account = stack.new_account()
    with stack.admin() as admin:
        admin.post(f"/accounts/{account}/gateways", json={"id": "strict", "byok_only": True})
    r = httpx.post(stack.base(account, "strict") + "/openai/chat/completions",
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "byok_only" in r.json()["error"]["message"]


def test_unknown_account_and_gateway_are_404(stack: Stack) -> None:
    r = httpx.post(stack.gateway.url + "/v1/nobody-here/default/openai/chat/completions", json={})
    assert r.status_code == 404 and "nobody-here" in r.json()["error"]["message"]
    account = stack.new_account()
    r = httpx.post(stack.base(account, "missing") + "/openai/chat/completions", json={})
    assert r.status_code == 404
