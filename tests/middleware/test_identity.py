"""AccessIdentity and GatewayAuth alone in front of a tiny ASGI app, with a local JWKS server on loopback."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.exchange import Exchange
from gateway.identity import JWTVerifier
from gateway.middleware.access_identity import AccessIdentity
from gateway.middleware.attribution import Attribution
from harness.fakes import FakeServer

AUD = "app-aud-123"


class IdP:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.fetches = 0
        self.down = False
        idp = self

        async def certs(request: Request) -> JSONResponse:
            idp.fetches += 1
            if idp.down:
                return JSONResponse({"error": "down"}, 503)
            keys = []
            for kid, key, alg in (("rsa1", idp.rsa, "RS256"), ("ec1", idp.ec, "ES256")):
                jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(key.public_key()))
                keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
            return JSONResponse({"keys": keys})

        self.server = FakeServer(Starlette(routes=[Route("/cdn-cgi/access/certs", certs)])).start()
        self.issuer = self.server.url

    def token(self, alg: str = "RS256", kid: str = "rsa1", **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": [AUD], "sub": "user-1", "email": "ada@example.com",
                "groups": ["eng", "ml"], "iat": now, "exp": now + 300, **claims}
        key = self.rsa if alg.startswith("RS") else self.ec
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    provider = IdP()
    yield provider
    provider.server.stop()


async def inner(scope: Any, receive: Any, send: Any) -> None:
    ex = Exchange.of(scope)
    await JSONResponse({"identity": ex.identity.as_dict() if ex.identity else None,
                        "metadata": ex.metadata})(scope, receive, send)


def app_for(idp: IdP, client: httpx.AsyncClient) -> Any:
    verifier = JWTVerifier(client, issuers={idp.issuer: idp.issuer + "/cdn-cgi/access/certs"}, audience=(AUD,))
    return AccessIdentity(Attribution(inner), verifier=verifier)


async def ask(app: Any, token: str | None, metadata: str | None = None) -> httpx.Response:
    headers = {}
    if token is not None:
        headers["Cf-Access-Jwt-Assertion"] = token
    if metadata is not None:
        headers["cf-aig-metadata"] = metadata
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        return await c.get("/", headers=headers)


async def test_valid_user_and_service_tokens(idp: IdP) -> None:
    async with httpx.AsyncClient() as client:
        app = app_for(idp, client)
        r = await ask(app, idp.token(), metadata='{"team": "search", "cf.user_id": "evil"}')
        assert r.status_code == 400  # a client cannot set reserved keys
        r = await ask(app, idp.token(), metadata='{"team": "search"}')
        assert r.json()["identity"] == {"user_id": "user-1", "email": "ada@example.com", "groups": ["eng", "ml"],
                                        "service_token": None}
        assert r.json()["metadata"] == {"team": "search", "cf.user_id": "user-1", "cf.user.email": "ada@example.com",
                                        "cf.user.groups": ["eng", "ml"]}
        r = await ask(app, idp.token(alg="ES256", kid="ec1", sub="", common_name="ci-bot.access"))
        assert r.json()["identity"]["service_token"] == "ci-bot.access" and r.json()["identity"]["user_id"] is None
        assert (await ask(app, None)).json()["identity"] is None


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_attack_matrix_is_401_and_never_reaches_the_app(idp: IdP) -> None:
    now = int(time.time())
    public_pem = idp.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    good = idp.token()
    head, payload, sig = good.split(".")
    claims = jwt.decode(good, options={"verify_signature": False})
    hs_header = _b64({"alg": "HS256", "kid": "rsa1", "typ": "JWT"})
    import hashlib
    import hmac
    hs_sig = base64.urlsafe_b64encode(hmac.new(public_pem, f"{hs_header}.{payload}".encode(), hashlib.sha256)
                                      .digest()).rstrip(b"=").decode()
    attacks = {
        "alg none": f"{_b64({'alg': 'none', 'kid': 'rsa1'})}.{payload}.",
        "HS256 with the public key": f"{hs_header}.{payload}.{hs_sig}",
        "expired": idp.token(exp=now - 3600, iat=now - 7200),
        "not yet valid": idp.token(nbf=now + 3600),
        "wrong issuer": idp.token(iss="https://evil.example"),
        "wrong audience": idp.token(aud=["someone-else"]),
        "unknown kid": idp.token(kid="nope"),
        "tampered payload": f"{head}.{_b64({**claims, 'sub': 'admin'})}.{sig}",
        "garbage": "not.a.jwt",
    }
    async with httpx.AsyncClient() as client:
        app = app_for(idp, client)
        for name, token in attacks.items():
            r = await ask(app, token)
            assert r.status_code == 401, name
            assert "identity" not in r.json(), name  # the inner app never answered
    async with httpx.AsyncClient() as client:
        idp.down = True
        try:
            r = await ask(app_for(idp, client), idp.token())
            assert r.status_code == 401 and "unavailable" in r.json()["error"]["message"]
        finally:
            idp.down = False


async def test_unknown_kids_refresh_the_keys_at_most_once_per_interval(idp: IdP) -> None:
    async with httpx.AsyncClient() as client:
        app = app_for(idp, client)
        before = idp.fetches
        for i in range(20):
            assert (await ask(app, idp.token(kid=f"made-up-{i}"))).status_code == 401
        assert idp.fetches - before == 1
