"""The whole chain: gateway tokens, JWT, identity in logs, metadata spoofing, ZDR routing, prefix mount,
the request id ContextVar, and no secret in any log."""

from __future__ import annotations

import contextlib
import io
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from gateway.app import create_app
from gateway.context import JsonLogFormatter, request_id_var
from gateway.settings import PROVIDERS, ProviderConfig, Settings
from harness.fakes import FakeServer, openai_app
from tests.eventually import eventually_sync
from tests.middleware.test_identity import AUD, IdP

ADMIN = "chain-admin"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "chain test"}]}


class Chain:
    def __init__(self, database_url: str, idp: IdP) -> None:
        self.upstream, self.zdr = openai_app("/v1"), openai_app("/v1")
        self.fakes = [FakeServer(self.upstream).start(), FakeServer(self.zdr).start()]
        providers = {p: ProviderConfig(p, self.fakes[0].url + "/v1", key=f"gw-{p}") for p in PROVIDERS}
        providers["openai"] = ProviderConfig("openai", self.fakes[0].url + "/v1", key="gw-openai",
                                             zdr_upstream=self.fakes[1].url + "/v1", zdr_key="gw-openai-zdr")
        settings = Settings(database_url=database_url, admin_token=ADMIN, providers=providers,
                            jwt_issuer=idp.issuer, jwks_url=idp.issuer + "/cdn-cgi/access/certs", jwt_audience=(AUD,))
        gateway = create_app(settings, background=False)

        @contextlib.asynccontextmanager
        async def lifespan(app: Any) -> Any:  # Mount does not forward lifespan: run the gateway's in ours
            async with gateway.router.lifespan_context(gateway):
                yield

        outer = Starlette(routes=[Mount("/ai", app=gateway)], lifespan=lifespan)
        self.server = FakeServer(outer, lifespan="on").start()
        self.base = self.server.url + "/ai"
        self.admin = httpx.Client(base_url=self.base + "/admin", headers={"Authorization": f"Bearer {ADMIN}"})

    def account(self, **gateway: Any) -> str:
        name = f"c-{uuid.uuid4().hex[:8]}"
        assert self.admin.post("/accounts", json={"id": name}).status_code == 201
        self.admin.post(f"/accounts/{name}/credits/topups", json={"amount_usd": "10", "idempotency_key": "s"})
        self.admin.post(f"/accounts/{name}/gateways", json={"id": "g", **gateway})
        return name

    def url(self, account: str) -> str:
        return f"{self.base}/v1/{account}/g/openai/chat/completions"

    def logs(self, account: str, n: int = 1) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = eventually_sync(
            lambda: self.admin.get(f"/accounts/{account}/gateways/g/logs").json()["result"],
            until=lambda rows: len(rows) >= n, what=f"{n} log rows")
        return rows

    def close(self) -> None:
        self.admin.close()
        self.server.stop()
        for fake in self.fakes:
            fake.stop()


@pytest.fixture(scope="module")
def chain(database_url: str) -> Iterator[tuple[Chain, IdP]]:
    idp = IdP()
    c = Chain(database_url, idp)
    yield c, idp
    c.close()
    idp.server.stop()


def test_gateway_tokens_and_jwt_satisfy_authentication(chain: tuple[Chain, IdP]) -> None:
    c, idp = chain
    account = c.account(authentication=True)
    assert httpx.post(c.url(account), json=BODY).status_code == 401
    created = c.admin.post(f"/accounts/{account}/gateways/g/tokens", json={"name": "ci"}).json()["result"]
    token = created["token"]
    assert token not in c.admin.get(f"/accounts/{account}/gateways/g/tokens").text
    ok = httpx.post(c.url(account), json=BODY, headers={"cf-aig-authorization": f"Bearer {token}"})
    assert ok.status_code == 200 and c.upstream.state.recorder.last.key == "gw-openai"
    wrong = httpx.post(c.url(account), json=BODY, headers={"cf-aig-authorization": "Bearer sgk_wrong"})
    assert wrong.status_code == 401
    by_jwt = httpx.post(c.url(account), json=BODY, headers={"Cf-Access-Jwt-Assertion": idp.token()})
    assert by_jwt.status_code == 200
    bad_jwt = httpx.post(c.url(account), json=BODY, headers={"Cf-Access-Jwt-Assertion": idp.token(aud=["x"])})
    assert bad_jwt.status_code == 401 and "audience" in bad_jwt.json()["error"]["message"]
    c.admin.delete(f"/accounts/{account}/gateways/g/tokens/{created['id']}")
    revoked = httpx.post(c.url(account), json=BODY, headers={"cf-aig-authorization": f"Bearer {token}"})
    assert revoked.status_code == 401
    last = httpx.post(c.url(account), json=BODY, headers={"Cf-Access-Jwt-Assertion": idp.token()})
    assert last.status_code == 200 and "cf-aig-log-id" in last.headers and "cf-aig-log-id" not in revoked.headers
    rows = c.logs(account, 3)  # rows are written in order: the refusals before the last call would be in by now
    # refused for want of a valid token: not the tenant's traffic, never in its log (anyone could fill it)
    assert [r["status_code"] for r in rows] == [200, 200, 200]
    everything = str(rows) + c.admin.get(f"/accounts/{account}/gateways/g/logs").text
    assert token not in everything and idp.token()[:60] not in everything


def test_identity_and_metadata_in_logs_cannot_be_spoofed(chain: tuple[Chain, IdP]) -> None:
    c, idp = chain
    account = c.account(require_identity=True)
    assert httpx.post(c.url(account), json=BODY).status_code == 401
    spoof = httpx.post(c.url(account), json=BODY, headers={"Cf-Access-Jwt-Assertion": idp.token(),
                                                            "cf-aig-metadata": '{"cf.user_id": "ceo"}'})
    assert spoof.status_code == 400
    r = httpx.post(c.url(account), json=BODY, headers={"Cf-Access-Jwt-Assertion": idp.token(),
                                                        "cf-aig-metadata": '{"team": "ml", "n": 3}'})
    assert r.status_code == 200
    assert "cf-access-jwt-assertion" not in c.upstream.state.recorder.last.headers
    rows = [row for row in c.logs(account, 3) if row["status_code"] == 200]
    assert rows[0]["identity"]["user_id"] == "user-1" and rows[0]["identity"]["groups"] == ["eng", "ml"]
    assert rows[0]["metadata"] == {"team": "ml", "n": 3, "cf.user_id": "user-1", "cf.user.email": "ada@example.com",
                                   "cf.user.groups": ["eng", "ml"]}
    found = c.admin.get(f"/accounts/{account}/gateways/g/logs", params={"metadata.team": "ml"}).json()["result"]
    assert [x["id"] for x in found] == [rows[0]["id"]]
    assert c.admin.get(f"/accounts/{account}/gateways/g/logs", params={"user_id": "user-1"}).json()["result"]


@pytest.mark.parametrize(("header", "value"), [("cf-aig-metadata", "[1]"), ("cf-aig-metadata", '{"a": {"b": 1}}'),
                                               ("cf-aig-metadata", '{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6}'),
                                               ("cf-aig-zdr", "sometimes")])
def test_invalid_chain_headers_are_400_naming_the_header(chain: tuple[Chain, IdP], header: str, value: str) -> None:
    c, _ = chain
    account = c.account()
    before = len(c.upstream.state.recorder.requests)
    r = httpx.post(c.url(account), json=BODY, headers={header: value})
    assert r.status_code == 400 and header in r.json()["error"]["message"]
    assert len(c.upstream.state.recorder.requests) == before


def test_zdr_routes_unified_calls_to_the_zdr_configuration(chain: tuple[Chain, IdP]) -> None:
    c, _ = chain
    account = c.account(zdr=True)
    assert httpx.post(c.url(account), json=BODY).status_code == 200
    assert c.zdr.state.recorder.last.key == "gw-openai-zdr"
    zdr_count = len(c.zdr.state.recorder.requests)
    assert httpx.post(c.url(account), json=BODY, headers={"cf-aig-zdr": "false"}).status_code == 200
    assert len(c.zdr.state.recorder.requests) == zdr_count
    assert httpx.post(c.url(account), json=BODY, headers={"Authorization": "Bearer own"}).status_code == 200
    anth = httpx.post(f"{c.base}/v1/{account}/g/anthropic/v1/messages",
                      json={"model": "claude-sonnet-4-6", "max_tokens": 5, "messages": []})
    assert anth.status_code in (200, 404)  # the fake upstream for anthropic is an OpenAI fake: only the log matters
    rows = {(r["billing_mode"], r["provider"], r["zdr_applied"], r["zdr_reason"]) for r in c.logs(account, 4)}
    assert ("unified", "openai", True, None) in rows
    assert ("unified", "openai", False, None) in rows
    assert ("byok", "openai", False, "zero data retention applies only to unified billing") in rows
    assert any(r[1] == "anthropic" and r[2] is False and "no zero-data-retention" in r[3] for r in rows)


async def test_request_id_context_reaches_inner_apps_and_log_lines() -> None:
    seen: list[str | None] = []
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("spendgate.test")
    logger.addHandler(handler)

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(request_id_var.get())
        logger.warning("inside")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    from gateway.middleware.request_log import RequestLog

    class NoGateways:
        async def get(self, a: str, g: str) -> Any:
            from gateway.gateways import UnknownAccount

            raise UnknownAccount(a)

    app = RequestLog(inner, gateways=NoGateways(), writer=None)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        await client.get("/acct/gw/openai/x")
    logger.removeHandler(handler)
    assert seen[0] and f'"request_id": "{seen[0]}"' in stream.getvalue()


def test_the_real_sdk_through_the_whole_chain_under_a_prefix(chain: tuple[Chain, IdP]) -> None:
    c, _ = chain
    account = c.account(authentication=True)
    token = c.admin.post(f"/accounts/{account}/gateways/g/tokens", json={"name": "sdk"}).json()["result"]["token"]
    client = openai.OpenAI(base_url=f"{c.base}/v1/{account}/g/openai", api_key="sk-own-key-xyz",
                           default_headers={"cf-aig-authorization": f"Bearer {token}",
                                            "cf-aig-metadata": '{"app": "sdk"}'})
    completion = client.chat.completions.create(**BODY)
    assert completion.choices[0].message.content
    row = c.logs(account)[0]
    assert row["metadata"] == {"app": "sdk"} and row["billing_mode"] == "byok"
    assert "sk-own-key-xyz" not in str(row)


async def test_forwarded_headers_are_trusted_only_from_trusted_proxies(db: Any) -> None:
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    seen = {}
    for trusted in (("127.0.0.1",), ("10.9.9.9",)):
        app = create_app(Settings(database_url=db.url, admin_token="x", trusted_proxies=trusted), db=db,
                         background=False)

        async def whoami(request: Request) -> JSONResponse:
            return JSONResponse({"client": request.client.host if request.client else None,
                                 "scheme": request.url.scheme})

        app.router.routes.append(Route("/whoami", whoami))
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                         base_url="http://gw") as client:
            r = await client.get("/whoami", headers={"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
        seen[trusted] = r.json()
    assert seen[("127.0.0.1",)] == {"client": "203.0.113.7", "scheme": "https"}
    assert seen[("10.9.9.9",)] == {"client": "127.0.0.1", "scheme": "http"}
