"""Retries, timeouts, unreachable upstreams, invalid headers, cut streams, large bodies."""

from __future__ import annotations

import json
import socket
import time
import uuid

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import PROVIDERS, ProviderConfig, Settings
from harness.fakes import FakeServer
from tests.providers.conftest import Stack

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
KEY = {"Authorization": "Bearer sk-client"}


def url(stack: Stack, account: str) -> str:
    return stack.base(account) + "/openai/chat/completions"


@pytest.mark.parametrize(("header", "value"), [
    ("cf-aig-max-attempts", "9"), ("cf-aig-max-attempts", "x"), ("cf-aig-retry-delay", "6000"),
    ("cf-aig-backoff", "random"), ("cf-aig-request-timeout", "-1"), ("cf-aig-no-wholesale", "maybe"),
    ("cf-aig-custom-cost", "{bad"),
])
def test_invalid_headers_are_400_and_nothing_goes_upstream(stack: Stack, header: str, value: str) -> None:
    account = stack.new_account()
    before = len(stack.recorder("openai").requests)
    r = httpx.post(url(stack, account), json=BODY, headers={**KEY, header: value})
    assert r.status_code == 400 and header in r.json()["error"]["message"]
    assert len(stack.recorder("openai").requests) == before


def test_retries_5xx_then_succeeds(stack: Stack) -> None:
    account = stack.new_account()
    key = uuid.uuid4().hex
    headers = {**KEY, "x-fake-fail-times": "2", "x-fake-key": key, "cf-aig-max-attempts": "3",
               "cf-aig-retry-delay": "10", "cf-aig-backoff": "exponential"}
    r = httpx.post(url(stack, account), json=BODY, headers=headers)
    assert r.status_code == 200
    assert sum(1 for q in stack.recorder("openai").requests if q.headers.get("x-fake-key") == key) == 3


def test_without_retries_the_upstream_error_comes_back_as_is(stack: Stack) -> None:
    account = stack.new_account()
    r = httpx.post(url(stack, account), json=BODY, headers={**KEY, "x-fake-status": "503"})
    assert r.status_code == 503 and r.json()["error"]["message"] == "fake error 503"
    exhausted = httpx.post(url(stack, account), json=BODY,
                           headers={**KEY, "x-fake-status": "429", "cf-aig-max-attempts": "2"})
    assert exhausted.status_code == 429


def test_timeout_to_first_byte_is_504_after_retries(stack: Stack) -> None:
    account = stack.new_account()
    started = time.monotonic()
    r = httpx.post(url(stack, account), json=BODY, headers={**KEY, "x-fake-delay-ms": "2000",
                                                            "cf-aig-request-timeout": "150",
                                                            "cf-aig-max-attempts": "2"})
    assert r.status_code == 504 and "openai" in r.json()["error"]["message"]
    assert time.monotonic() - started < 1.5


def test_unreachable_upstream_is_502_naming_the_provider(database_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed when the block ends: nothing listens there
    providers = {p: ProviderConfig(p, f"http://127.0.0.1:{dead}", key="k") for p in PROVIDERS}
    app = create_app(Settings(database_url=database_url, admin_token="t", providers=providers), background=False)
    with FakeServer(app, lifespan="on") as gw:
        admin = httpx.Client(base_url=gw.url + "/admin", headers={"Authorization": "Bearer t"})
        account = f"u-{uuid.uuid4().hex[:8]}"
        admin.post("/accounts", json={"id": account})
        r = httpx.post(f"{gw.url}/v1/{account}/default/anthropic/v1/messages", headers={"x-api-key": "k1"},
                       json={"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []})
        assert r.status_code == 502 and "anthropic" in r.json()["error"]["message"]
        admin.close()


def test_stream_cut_in_the_middle_ends_the_client_stream(stack: Stack) -> None:
    account = stack.new_account()
    with httpx.stream("POST", url(stack, account), json={**BODY, "stream": True},
                      headers={**KEY, "x-fake-cut-after": "2"}) as r:
        assert r.status_code == 200
        data = b"".join(r.iter_raw())
    # the client's stream ends where upstream broke: no [DONE], nothing invented
    assert data.count(b"data: ") == 2 and b"[DONE]" not in data


def test_a_large_response_streams_through_with_its_usage(stack: Stack) -> None:
    account = stack.new_account()
    size = 10 * 1024 * 1024
    received = 0
    first_at = None
    started = time.monotonic()
    with httpx.stream("POST", url(stack, account), json=BODY,
                      headers={**KEY, "x-fake-output-bytes": str(size)}) as r:
        assert r.status_code == 200
        assert "cf-aig-cost" not in r.headers  # too large to hold back for the header
        tail = b""
        for chunk in r.iter_raw():
            first_at = first_at or time.monotonic()
            received += len(chunk)
            tail = (tail + chunk)[-1000:]
    assert received > size
    assert json.loads(tail[tail.rindex(b'"usage"') + 8:-1])["prompt_tokens"] == 1
    assert first_at is not None and first_at - started < 5


def test_custom_cost_only_where_allowed(stack: Stack) -> None:
    account = stack.new_account()
    cost = {"cf-aig-custom-cost": '{"per_token_in": 0.5, "per_token_out": 1}'}
    refused = httpx.post(url(stack, account), json=BODY, headers={**KEY, **cost})
    assert refused.status_code == 400
    with stack.admin() as admin:
        admin.post(f"/accounts/{account}/gateways", json={"id": "cc", "allow_custom_cost": True})
    r = httpx.post(stack.base(account, "cc") + "/openai/chat/completions", json=BODY, headers={**KEY, **cost})
    usage = r.json()["usage"]
    assert r.headers["cf-aig-cost"] == str(usage["prompt_tokens"] * 0.5 + usage["completion_tokens"])
