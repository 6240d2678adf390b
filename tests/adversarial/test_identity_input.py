"""Hostile identity tokens and key sets: claims of the wrong type, keys too weak to trust, broken JWKS documents.
Every one is a 401 JSON error from AccessIdentity, and the app behind it never runs."""

from __future__ import annotations

import base64
import json
import random
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from gateway.identity import JWTVerifier
from gateway.middleware.access_identity import AccessIdentity
from tests.middleware.test_identity import AUD, IdP, app_for, ask, inner

ISSUER = "https://idp.example"
JWKS_URL = ISSUER + "/certs"


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    provider = IdP()
    yield provider
    provider.server.stop()


def rejected(response: httpx.Response) -> str:
    """Assert a 401 in the gateway's error shape that the inner app never answered; returns the message."""
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["success"] is False and set(body) == {"success", "error"}, body
    message: str = body["error"]["message"]
    assert message.startswith("Cf-Access-Jwt-Assertion:")
    return message


# -- claims of the wrong type ----------------------------------------------------------------------------------

WRONG_CLAIMS: list[dict[str, Any]] = [
    {"groups": 5}, {"groups": [1, {}]}, {"groups": [1]}, {"groups": {"eng": True}}, {"groups": [None]},
    {"groups": ["eng", ["ml"]]}, {"groups": ["g"] * 1001}, {"groups": ["eng\n"]}, {"groups": ["\ud800"]},
    {"email": 7}, {"email": ["ada@example.com"]}, {"email": "ada@example.com\r\nBcc: eve@example.com"},
    {"sub": []}, {"sub": {}}, {"sub": 5}, {"sub": ["admin"]}, {"sub": "user\x00"}, {"sub": "u" * 1001},
    {"sub": "", "common_name": 5}, {"sub": "", "common_name": "bot\n"},
    {"exp": "tomorrow"}, {"exp": None}, {"nbf": "now"}, {"iat": "then"}, {"aud": [5]}, {"iss": [ISSUER]},
]


def token_with(idp: IdP, **overrides: Any) -> str:
    """A token the IdP really signed, with claims PyJWT's encoder would refuse to write (it checks some types)."""
    now = int(time.time())
    body = {"iss": idp.issuer, "aud": [AUD], "sub": "user-1", "email": "ada@example.com", "groups": ["eng"],
            "iat": now, "exp": now + 300, **overrides}
    return jwt.PyJWS().encode(json.dumps(body).encode(), idp.rsa, algorithm="RS256", headers={"kid": "rsa1"})


@pytest.mark.parametrize("claims", WRONG_CLAIMS, ids=[json.dumps(c)[:40] for c in WRONG_CLAIMS])
async def test_claims_of_the_wrong_type_are_401(idp: IdP, claims: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as client:
        rejected(await ask(app_for(idp, client), token_with(idp, **claims)))


async def test_good_claims_still_pass(idp: IdP) -> None:
    async with httpx.AsyncClient() as client:
        app = app_for(idp, client)
        answer = await ask(app, idp.token(groups="eng"))
        assert answer.status_code == 200 and answer.json()["identity"]["groups"] == ["eng"]
        answer = await ask(app, idp.token(groups=None, email=None))
        assert answer.json()["identity"] == {"user_id": "user-1", "email": None, "groups": [],
                                             "service_token": None}


# -- weak keys and broken key sets -----------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64int(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _prime(rng: random.Random, bits: int) -> int:
    def probably_prime(n: int) -> bool:
        d, s = n - 1, 0
        while d % 2 == 0:
            d, s = d // 2, s + 1
        for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37):
            x = pow(a, d, n)
            if x in (1, n - 1):
                continue
            for _ in range(s - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                return False
        return True

    while True:
        candidate = rng.getrandbits(bits) | (3 << (bits - 2)) | 1
        if candidate % 65537 != 1 and probably_prime(candidate):
            return candidate


def rsa_512() -> rsa.RSAPrivateKey:
    """cryptography refuses to generate keys under 1024 bits, so build one from two 256-bit primes."""
    rng = random.Random(512)
    p, q = _prime(rng, 256), _prime(rng, 256)
    d = pow(65537, -1, (p - 1) * (q - 1))
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                    rsa.RSAPublicNumbers(65537, p * q))
    return numbers.private_key()


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    public = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": _b64int(public.n), "e": _b64int(public.e)}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str, crv: str) -> dict[str, Any]:
    public = key.public_key().public_numbers()
    size = (key.curve.key_size + 7) // 8
    return {"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": crv,
            "x": _b64(public.x.to_bytes(size, "big")), "y": _b64(public.y.to_bytes(size, "big"))}


def claims() -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": [AUD], "sub": "user-1", "iat": now, "exp": now + 300}


def signed(key: Any, kid: str, alg: str = "RS256") -> str:
    with warnings.catch_warnings():  # PyJWT warns when signing with a short key: that is the point here
        warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
        return jwt.encode(claims(), key, algorithm=alg, headers={"kid": kid})


def es256_on(key: ec.EllipticCurvePrivateKey, kid: str) -> str:
    """An ES256-labelled token signed on any curve (PyJWT itself only signs ES256 on P-256)."""
    head = _b64(json.dumps({"alg": "ES256", "kid": kid, "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims()).encode())
    r, s = decode_dss_signature(key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
    size = (key.curve.key_size + 7) // 8
    return f"{head}.{body}.{_b64(r.to_bytes(size, 'big') + s.to_bytes(size, 'big'))}"


def verifier_app(serve: Callable[[httpx.Request], httpx.Response], client_box: list[httpx.AsyncClient]) -> Any:
    client = httpx.AsyncClient(transport=httpx.MockTransport(serve))
    client_box.append(client)
    verifier = JWTVerifier(client, issuers={ISSUER: JWKS_URL}, audience=(AUD,))
    return AccessIdentity(inner, verifier=verifier)


@pytest.fixture
async def clients() -> AsyncIterator[list[httpx.AsyncClient]]:
    box: list[httpx.AsyncClient] = []
    yield box
    for client in box:
        await client.aclose()


async def test_weak_keys_in_the_jwks_are_ignored(clients: list[httpx.AsyncClient]) -> None:
    strong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    weak_512, weak_1024 = rsa_512(), rsa.generate_private_key(public_exponent=65537, key_size=1024)
    k1, p521 = ec.generate_private_key(ec.SECP256K1()), ec.generate_private_key(ec.SECP521R1())
    hmac_secret = b"0123456789abcdef0123456789abcdef"
    keys = [rsa_jwk(strong, "strong"), rsa_jwk(weak_512, "rsa512"), rsa_jwk(weak_1024, "rsa1024"),
            ec_jwk(k1, "k1", "secp256k1"), ec_jwk(p521, "p521", "P-521"),
            {"kty": "oct", "kid": "hmac", "alg": "HS256", "k": _b64(hmac_secret)}]
    app = verifier_app(lambda request: httpx.Response(200, json={"keys": keys}), clients)
    assert (await ask(app, signed(strong, "strong"))).status_code == 200
    assert "unknown signing key" in rejected(await ask(app, signed(weak_512, "rsa512")))
    assert "unknown signing key" in rejected(await ask(app, signed(weak_1024, "rsa1024")))
    rejected(await ask(app, es256_on(k1, "k1")))
    rejected(await ask(app, es256_on(p521, "p521")))
    rejected(await ask(app, signed(hmac_secret, "hmac", alg="HS256")))
    unsigned = f"{_b64(json.dumps({'alg': 'none', 'kid': 'strong'}).encode())}.{_b64(json.dumps(claims()).encode())}."
    assert "not allowed" in rejected(await ask(app, unsigned))


@pytest.mark.parametrize("document", [
    [], {"keys": 5}, {"keys": {"kid": "x"}}, "keys", None,
    {"keys": [5, "x", None, [], {"kid": ["a"]}, {"kid": "a", "kty": "RSA", "n": 5, "e": "AQAB"},
              {"kid": "b", "kty": "EC", "crv": "P-256", "x": "!!", "y": {}}, {"kid": "c", "kty": ["RSA"]}]},
])
async def test_broken_jwks_documents_are_401(clients: list[httpx.AsyncClient], document: Any) -> None:
    app = verifier_app(lambda request: httpx.Response(200, json=document), clients)
    strong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rejected(await ask(app, signed(strong, "a")))


@pytest.mark.parametrize("configuration", [[], {"jwks_uri": 5}, {"jwks_uri": ["https://x"]}, {"jwks_uri": "ftp://x"},
                                           {}, "x"])
async def test_broken_openid_configurations_are_401(clients: list[httpx.AsyncClient], configuration: Any) -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200, json=configuration)))
    clients.append(client)
    app = AccessIdentity(inner, verifier=JWTVerifier(client, issuers={ISSUER: None}, audience=(AUD,)))
    strong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "unavailable" in rejected(await ask(app, signed(strong, "a")))
