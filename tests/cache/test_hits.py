"""Hits and misses through HTTP with the real SDKs: what is a hit (the canonical call, whatever its formatting; a
custom key), what never is (another gateway, another account, another identity, skip, the cache off), and the
headers that say so."""

from __future__ import annotations

import anthropic
import httpx
import openai
from google import genai
from google.genai import types as genai_types

from tests.cache.conftest import CHAT, CacheStack, chat, raw, unique


def status(answer: httpx.Response) -> str | None:
    return answer.headers.get("cf-aig-cache-status")


def test_the_second_identical_call_is_a_hit_and_never_reaches_the_provider(cache_stack: CacheStack) -> None:
    _, base = cache_stack.new_gateway(cache_ttl=300)
    client = openai.OpenAI(base_url=base + "/openai", api_key="sk-client")
    first = client.chat.completions.with_raw_response.create(**chat(unique()))
    second = client.chat.completions.with_raw_response.create(**chat(first.parse().choices[0].message.content or ""))
    again = client.chat.completions.with_raw_response.create(**chat(second.parse().choices[0].message.content or ""))
    assert [status(r) for r in (first, second, again)] == ["MISS", "MISS", "MISS"]  # three different prompts
    assert cache_stack.calls() == 3
    prompt = unique()
    miss = client.chat.completions.with_raw_response.create(**chat(prompt))
    hit = client.chat.completions.with_raw_response.create(**chat(prompt))
    assert (status(miss), status(hit)) == ("MISS", "HIT")
    assert cache_stack.calls() == 4
    assert hit.parse().model_dump() == miss.parse().model_dump()
    assert hit.headers["cf-aig-cost"] == "0" and hit.headers["cf-aig-provider"] == "openai"
    assert "cf-aig-budget-remaining" not in hit.headers


def test_formatting_differences_are_the_same_call(cache_stack: CacheStack) -> None:
    _, base = cache_stack.new_gateway(cache_ttl=300)
    body = chat(unique(), temperature=0.5, stop=["\n\n"])
    headers = {"authorization": "Bearer sk-client", "content-type": "application/json"}
    with httpx.Client(base_url=base, headers=headers) as client:
        answers = [client.post(CHAT, content=raw(body)), client.post(CHAT, content=raw(body, indent=4)),
                   client.post(CHAT, content=raw(body, reverse=True)),
                   client.post(CHAT, content=raw(body).replace(b'"user"', b'"\\u0075ser"'))]
        other = client.post(CHAT, content=raw({**body, "temperature": 0.6}))
    assert [status(a) for a in answers] == ["MISS", "HIT", "HIT", "HIT"]
    assert len({a.content for a in answers}) == 1
    assert status(other) == "MISS" and cache_stack.calls() == 2


def test_anthropic_and_gemini_sdks_hit_too(cache_stack: CacheStack) -> None:
    _, base = cache_stack.new_gateway(cache_ttl=300)
    claude = anthropic.Anthropic(base_url=base + "/anthropic", api_key="sk-ant-client")
    prompt = unique()
    answers = [claude.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=20, messages=[{"role": "user", "content": prompt}]) for _ in range(2)]
    assert [a.headers["cf-aig-cache-status"] for a in answers] == ["MISS", "HIT"]
    assert answers[1].parse().content[0].text == answers[0].parse().content[0].text  # type: ignore[union-attr]
    assert cache_stack.calls("anthropic") == 1

    gemini = genai.Client(api_key="g-client", http_options=genai_types.HttpOptions(
        base_url=base + "/google-ai-studio", api_version="v1beta"))
    texts = [gemini.models.generate_content(model="gemini-2.5-flash", contents=prompt).text for _ in range(2)]
    assert texts[0] == texts[1] and cache_stack.calls("google-ai-studio") == 1


def test_skip_cache_custom_key_and_per_request_ttl(cache_stack: CacheStack) -> None:
    _, base = cache_stack.new_gateway()  # cache_ttl unset: off unless a request asks
    client = openai.OpenAI(base_url=base + "/openai", api_key="sk-client")
    prompt = unique()
    off = [client.chat.completions.with_raw_response.create(**chat(prompt)) for _ in range(2)]
    assert [status(a) for a in off] == [None, None] and cache_stack.calls() == 2

    ttl = {"cf-aig-cache-ttl": "60"}
    asked = [client.chat.completions.with_raw_response.create(**chat(prompt), extra_headers=ttl) for _ in range(2)]
    assert [status(a) for a in asked] == ["MISS", "HIT"] and cache_stack.calls() == 3
    skipped = client.chat.completions.with_raw_response.create(
        **chat(prompt), extra_headers={**ttl, "cf-aig-skip-cache": "true"})
    assert status(skipped) is None and cache_stack.calls() == 4
    zero = client.chat.completions.with_raw_response.create(**chat(prompt), extra_headers={"cf-aig-cache-ttl": "0"})
    assert status(zero) is None and cache_stack.calls() == 5

    # a custom key replaces the call: a different prompt with the same key gets the first answer
    keyed = {**ttl, "cf-aig-cache-key": f"faq-{unique()}"}
    first = client.chat.completions.with_raw_response.create(**chat("what are your opening hours"),
                                                              extra_headers=keyed)
    other = client.chat.completions.with_raw_response.create(**chat("something else entirely"), extra_headers=keyed)
    assert (status(first), status(other)) == ("MISS", "HIT") and cache_stack.calls() == 6
    assert other.parse().choices[0].message.content == first.parse().choices[0].message.content


def test_bad_cache_headers_are_refused_naming_the_header(cache_stack: CacheStack) -> None:
    _, base = cache_stack.new_gateway()
    with httpx.Client(base_url=base, headers={"authorization": "Bearer sk-client"}) as client:
        for name, value in (("cf-aig-cache-ttl", "soon"), ("cf-aig-cache-ttl", "-1"),
                            ("cf-aig-cache-ttl", str(10**9)), ("cf-aig-skip-cache", "yes"),
                            ("cf-aig-cache-key", "x" * 2000)):
            answer = client.post(CHAT, json=chat(), headers={name: value})
            assert answer.status_code == 400, (name, value)
            assert name in answer.text
    assert cache_stack.calls() == 0


def test_no_hit_across_gateways_accounts_or_provider_keys(cache_stack: CacheStack) -> None:
    account, base = cache_stack.new_gateway(cache_ttl=300)
    other_gateway = cache_stack.add_gateway(account, "g2", cache_ttl=300)
    _, other_account = cache_stack.new_gateway(cache_ttl=300)
    body = chat(unique())
    answers = []
    for url, key in ((base, "sk-one"), (other_gateway, "sk-one"), (other_account, "sk-one"), (base, "sk-two"),
                     (base, "sk-one"), (other_gateway, "sk-one")):
        answers.append(httpx.post(url + CHAT, json=body, headers={"authorization": f"Bearer {key}"}))
    assert [status(a) for a in answers] == ["MISS", "MISS", "MISS", "MISS", "HIT", "HIT"]
    assert cache_stack.calls() == 4


def test_identity_scope_keeps_each_callers_answers_to_themselves(cache_stack: CacheStack) -> None:
    _, base = cache_stack.new_gateway(cache_ttl=300, cache_scope="identity")
    idp, body = cache_stack.idp, chat(unique())

    def call(**who: str) -> httpx.Response:
        headers = {"authorization": "Bearer sk-client"}
        if who:
            headers["cf-access-jwt-assertion"] = idp.token(**who)
        return httpx.post(base + CHAT, json=body, headers=headers)

    ada, bob = call(sub="ada"), call(sub="bob")
    again = call(sub="ada")
    service = call(sub="", common_name="ci-job")
    anonymous = [call(), call()]
    assert [status(a) for a in (ada, bob, again, service)] == ["MISS", "MISS", "HIT", "MISS"]
    assert [status(a) for a in anonymous] == [None, None]  # no identity: this gateway caches nothing for it
    assert cache_stack.calls() == 5


def test_settings_are_validated_and_read_back(cache_stack: CacheStack) -> None:
    account, _ = cache_stack.new_gateway()
    with cache_stack.admin() as admin:
        path = f"/accounts/{account}/gateways/g"
        defaults = admin.get(path).json()["result"]
        assert (defaults["cache_ttl"], defaults["cache_scope"], defaults["cache_hit_charge"],
                defaults["cache_max_mb"]) == (None, "gateway", "0", 100)
        changed = admin.patch(path, json={"cache_ttl": 3600, "cache_scope": "identity", "cache_hit_charge": 0.25,
                                          "cache_max_mb": 5}).json()["result"]
        assert (changed["cache_ttl"], changed["cache_scope"], changed["cache_hit_charge"],
                changed["cache_max_mb"]) == (3600, "identity", "0.25", 5)
        for name, value in (("cache_ttl", 0), ("cache_ttl", "60"), ("cache_ttl", 10**9), ("cache_scope", "user"),
                            ("cache_hit_charge", "1.5"), ("cache_hit_charge", "NaN"), ("cache_hit_charge", -0.1),
                            ("cache_hit_charge", "1e-30"), ("cache_max_mb", 0), ("cache_max_mb", True)):
            answer = admin.patch(path, json={name: value})
            assert answer.status_code == 422 and answer.json()["error"]["field"] == name, (name, value)


def test_a_caller_set_price_is_part_of_the_key() -> None:
    """An answer stored at a price the caller set (`cf-aig-custom-cost`, where the gateway allows it) is not served
    to callers without that price: a hit's charge is a fraction of the stored cost."""
    from gateway.cache.keys import cache_key
    from gateway.exchange import Call

    call = Call("POST", "openai", "chat/completions", "", None, "gpt-4o-mini", False, 1, 16, True, "max_tokens",
                {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    plain = cache_key(call, [], [], None)
    free = cache_key(call, [(b"cf-aig-custom-cost", b'{"per_token_in":0,"per_token_out":0}')], [], None)
    dear = cache_key(call, [(b"Cf-Aig-Custom-Cost", b'{"per_token_in":1,"per_token_out":1}')], [], None)
    assert len({plain, free, dear}) == 3
    assert cache_key(call, [(b"x-other", b"1")], [], None) == plain  # keys without it are unchanged
