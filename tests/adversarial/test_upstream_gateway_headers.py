"""An upstream's own `cf-aig-*` response headers (another AI gateway behind a custom provider, or a forger) never
reach the client beside or instead of the gateway's (found by an adversarial review: a forged `cf-aig-cost`,
`cf-aig-log-id` and `cf-aig-cache-status` were relayed)."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from harness.fakes import FakeServer
from tests.adversarial.conftest import HostileStack


async def chat(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse(
        {"id": "x", "object": "chat.completion", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}},
        headers={"cf-aig-cost": "0.000000001", "cf-aig-log-id": "00000000-0000-0000-0000-000000000000",
                 "cf-aig-cache-status": "HIT", "cf-aig-provider": "openai"})


def test_upstream_cf_aig_headers_are_not_relayed(hostile: HostileStack) -> None:
    server = FakeServer(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])).start()
    try:
        account, base = hostile.new_gateway()
        with hostile.admin() as admin:
            r = admin.post(f"/accounts/{account}/gateways/g/custom-providers",
                           json={"slug": "evil", "base_url": server.url + "/v1"})
            assert r.status_code == 201, r.text
        answer = httpx.post(base + "/custom-evil/chat/completions", headers={"authorization": "Bearer sk-x"},
                            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        names = [k.decode().lower() for k, _ in answer.headers.raw]
        dups = {n for n in names if n.startswith("cf-aig-") and names.count(n) > 1}
        assert answer.status_code == 200
        assert answer.headers.get_list("cf-aig-cache-status") == [], "upstream's cache-status relayed"
        assert answer.headers.get_list("cf-aig-cost") == [], "an unpriced model has no cost: the upstream's relayed"
        assert answer.headers.get_list("cf-aig-log-id") != ["00000000-0000-0000-0000-000000000000"]
        assert not dups, f"cf-aig-* headers sent twice: {dups}"
    finally:
        server.stop()
