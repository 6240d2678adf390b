"""An issuer discovered through /.well-known/openid-configuration (no SPENDGATE_JWKS_URL): anyone can send tokens
naming it before any signature is checked, so its discovery runs once at a time and a failed one is not tried again
for 30 s (found by an adversarial review: every token made its own discovery request, and 50 concurrent first
tokens made 50 discovery and 50 key-set requests)."""

from __future__ import annotations

import asyncio
import time

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.errors import IdentityRejected
from gateway.identity import JWTVerifier
from harness.fakes import FakeServer


async def test_a_failed_discovery_is_not_refetched_for_every_token() -> None:
    hits = {"n": 0}

    async def config(request: Request) -> JSONResponse:
        hits["n"] += 1
        return JSONResponse({"error": "down"}, 503)

    server = FakeServer(Starlette(routes=[Route("/.well-known/openid-configuration", config)])).start()
    try:
        issuer = server.url
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # attacker's own key
        now = int(time.time())
        token = jwt.encode({"iss": issuer, "aud": ["aud"], "sub": "x", "exp": now + 300}, key, algorithm="RS256",
                           headers={"kid": "made-up"})
        async with httpx.AsyncClient() as client:
            verifier = JWTVerifier(client, issuers={issuer: None}, audience=("aud",))
            for _ in range(50):
                try:
                    await verifier.verify(token)
                except IdentityRejected:
                    pass
            sequential = hits["n"]
            hits["n"] = 0
            # concurrently too: no lock around discovery
            await asyncio.gather(*(verifier.verify(token) for _ in range(50)), return_exceptions=True)
            concurrent = hits["n"]
        assert sequential <= 2, f"{sequential} fetches of the OpenID configuration for 50 tokens"
        assert concurrent == 0, "the failure of moments ago is remembered"
    finally:
        server.stop()


async def test_concurrent_first_tokens_share_one_discovery() -> None:
    hits = {"n": 0, "certs": 0}

    async def config(request: Request) -> JSONResponse:
        hits["n"] += 1
        await asyncio.sleep(0.05)
        return JSONResponse({"jwks_uri": str(request.base_url) + "certs"})

    async def certs(request: Request) -> JSONResponse:
        hits["certs"] += 1
        return JSONResponse({"keys": []})

    server = FakeServer(Starlette(routes=[Route("/.well-known/openid-configuration", config),
                                          Route("/certs", certs)])).start()
    try:
        issuer = server.url
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode({"iss": issuer, "aud": ["aud"], "sub": "x", "exp": int(time.time()) + 300}, key,
                           algorithm="RS256", headers={"kid": "made-up"})
        async with httpx.AsyncClient() as client:
            verifier = JWTVerifier(client, issuers={issuer: None}, audience=("aud",))
            await asyncio.gather(*(verifier.verify(token) for _ in range(50)), return_exceptions=True)
    finally:
        server.stop()
