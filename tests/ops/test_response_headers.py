"""A proxied answer through a real `spendgate serve` carries one Date and one Server header, the server's own:
the upstream's Server, Date and hop-by-hop headers are not relayed (uvicorn adds Date and Server itself, so a
relayed copy would make two)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from harness.cluster import GatewayProcess, Operator, gateway_env
from harness.fakes import FakeServer, openai_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

ADMIN = "ops-headers-admin"
UPSTREAM_DATE = b"Mon, 01 Jan 2001 00:00:00 GMT"
FROM_UPSTREAM = [
    (b"server", b"fake-upstream"),
    (b"date", UPSTREAM_DATE),
    (b"connection", b"keep-alive, x-hop-named"),  # names x-hop-named as hop-by-hop
    (b"keep-alive", b"timeout=5, max=100"),
    (b"x-hop-named", b"1"),
    (b"proxy-connection", b"keep-alive"),
    (b"proxy-x-anything", b"1"),
    (b"upgrade", b"h2c"),
    (b"x-request-id", b"upstream-request-1"),  # an ordinary header: relayed
]
NOT_RELAYED = {b"keep-alive", b"x-hop-named", b"proxy-connection", b"proxy-x-anything", b"upgrade"}


def with_upstream_headers(app: ASGIApp) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        async def add(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *FROM_UPSTREAM]}
            await send(message)

        await app(scope, receive, add)

    return wrapped


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeServer]:
    with FakeServer(with_upstream_headers(openai_app("/v1"))) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(database_url: str, upstream: FakeServer) -> Iterator[GatewayProcess]:
    process = GatewayProcess(gateway_env(database_url, ADMIN, {"openai": upstream.url + "/v1"})).start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


def header_list(answer: httpx.Response, name: bytes) -> list[bytes]:
    return [value for key, value in answer.headers.raw if key.lower() == name]


def test_the_fake_upstream_sends_its_own_server_date_and_hop_headers(upstream: FakeServer) -> None:
    """What the gateway receives (so that the test below can fail): uvicorn's Server and Date and the app's."""
    answer = httpx.post(upstream.url + "/v1/chat/completions", headers={"authorization": "Bearer k"},
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200
    assert b"fake-upstream" in header_list(answer, b"server") and len(header_list(answer, b"server")) == 2
    assert UPSTREAM_DATE in header_list(answer, b"date")
    assert all(header_list(answer, name) for name in NOT_RELAYED)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_one_date_and_one_server_header(gateway: GatewayProcess, stream: bool) -> None:
    account = Operator(gateway.url, ADMIN).new_account(credits_usd="5")
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 10,
            "stream": stream}
    answer = httpx.post(f"{gateway.url}/v1/{account}/g/openai/chat/completions", json=body, timeout=20,
                        headers={"x-fake-usage": json.dumps({"input": 3, "output": 5})})
    assert answer.status_code == 200, answer.text
    assert header_list(answer, b"server") == [b"spendgate"], answer.headers.raw
    [date] = header_list(answer, b"date")
    assert date != UPSTREAM_DATE
    assert not [name for name, _ in answer.headers.raw if name.lower() in NOT_RELAYED], answer.headers.raw
    assert all(b"x-hop-named" not in value.lower() for value in header_list(answer, b"connection"))
    assert header_list(answer, b"x-request-id") == [b"upstream-request-1"]
    assert header_list(answer, b"cf-aig-step") == [b"0"]  # the gateway's own headers are there too
