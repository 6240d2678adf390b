"""The shared upstream client keeps no cookies: a cookie a provider set on one tenant's call never goes with the
next call, whoever makes it — on the direct aiohttp path and on httpx's own."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.providers.upstream import UpstreamClient, prepare
from harness.fakes.server import FakeServer


def cookie_server() -> tuple[FakeServer, list[str | None]]:
    seen: list[str | None] = []

    async def answer(request: Request) -> JSONResponse:
        seen.append(request.headers.get("cookie"))
        response = JSONResponse({"ok": True})
        response.set_cookie("session", "tenant-a-secret", path="/")
        return response

    return FakeServer(Starlette(routes=[Route("/v1/x", answer, methods=["POST", "GET"])])), seen


async def test_no_cookie_set_by_a_provider_goes_with_a_later_call() -> None:
    server, seen = cookie_server()
    async with server:
        base = f"http://localhost:{server.port}"  # a named host: aiohttp's default jar keeps its cookies
        client = UpstreamClient()
        try:
            for _ in range(3):
                response = await prepare(client, "POST", base, base + "/v1/x", {"content-type": "application/json"},
                                         b"{}")()
                await response.aread()
                await response.aclose()
                assert response.headers["set-cookie"].startswith("session=")  # the provider did set one
            answer: Any = await client.get(base + "/v1/x")  # httpx's own path
            assert answer.status_code == 200
            await client.get(base + "/v1/x")
        finally:
            await client.aclose()
    assert seen == [None] * 5
    assert len(client.cookies) == 0

