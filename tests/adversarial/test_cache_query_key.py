"""A Gemini key sent as `?`?key=` scopes cached answers like a key header (found by an adversarial review: with
`cf-aig-cache-key` set, an answer paid with one `?key=` was served to a request with another)."""

from __future__ import annotations

import uuid

import httpx

from tests.adversarial.conftest import HostileStack

PATH = "/google-ai-studio/v1beta/models/gemini-2.5-flash:generateContent"


def body() -> dict:
    return {"contents": [{"role": "user", "parts": [{"text": f"secret question {uuid.uuid4()}"}]}]}


def test_a_query_key_scopes_a_custom_cache_key(hostile: HostileStack) -> None:
    _, base = hostile.new_gateway(cache_ttl=300)
    ck = f"faq-{uuid.uuid4()}"
    b = body()
    hostile.clear()
    a = httpx.post(base + PATH, params={"key": "victim-real-google-key"}, json=b, headers={"cf-aig-cache-key": ck})
    assert a.status_code == 200, a.text
    assert a.headers.get("cf-aig-cache-status") == "MISS"
    # attacker: a different (bogus) key, the same cache key
    z = httpx.post(base + PATH, params={"key": "attacker-bogus-key"}, json=body(), headers={"cf-aig-cache-key": ck})
    # the same pair with the key in a header: scoped, as documented
    ck2 = f"faq-{uuid.uuid4()}"
    first = httpx.post(base + PATH, headers={"x-goog-api-key": "victim-real-google-key", "cf-aig-cache-key": ck2},
                       json=b)
    assert first.headers.get("cf-aig-cache-status") == "MISS"
    h2 = httpx.post(base + PATH, headers={"x-goog-api-key": "attacker-bogus-key", "cf-aig-cache-key": ck2}, json=b)
    assert h2.headers.get("cf-aig-cache-status") == "MISS"
    assert z.headers.get("cf-aig-cache-status") != "HIT", "answer paid with one ?key= served to another ?key="


def test_query_key_without_custom_key_is_scoped(hostile: HostileStack) -> None:
    _, base = hostile.new_gateway(cache_ttl=300)
    b = body()
    first = httpx.post(base + PATH, params={"key": "victim-real-google-key"}, json=b)
    assert first.headers.get("cf-aig-cache-status") == "MISS"
    z = httpx.post(base + PATH, params={"key": "attacker-bogus-key"}, json=b)
    assert z.headers.get("cf-aig-cache-status") == "MISS"
