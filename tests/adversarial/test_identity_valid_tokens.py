"""Valid tokens the verifier refused (found by an adversarial review): an issuer whose `iss` ends in a slash (Auth0
writes one) never verified, and P-384 keys were left out of the key set although documented as kept."""

from __future__ import annotations

import json
import time

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.identity import JWTVerifier, usable_key
from gateway.settings import Settings
from harness.fakes import FakeServer


async def test_an_issuer_with_a_trailing_slash_verifies() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))

    async def certs(request: Request) -> JSONResponse:
        return JSONResponse({"keys": [{**jwk, "kid": "k", "alg": "RS256"}]})

    server = FakeServer(Starlette(routes=[Route("/certs", certs)])).start()
    try:
        issuer = server.url + "/"  # as Auth0 writes it
        settings = Settings(jwt_issuer=issuer, jwks_url=server.url + "/certs", jwt_audience=("aud",))
        async with httpx.AsyncClient() as client:
            verifier = JWTVerifier.from_settings(settings, client)
            assert verifier is not None
            token = jwt.encode({"iss": issuer, "aud": "aud", "sub": "u", "exp": int(time.time()) + 300}, key,
                               algorithm="RS256", headers={"kid": "k"})
            identity = await verifier.verify(token)  # IdentityRejected("wrong issuer") before
        assert identity.user_id == "u"
    finally:
        server.stop()


def test_a_p384_key_is_kept() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    assert usable_key({**jwk, "kid": "p384"}) is not None
