"""AccessIdentity: verify `Cf-Access-Jwt-Assertion` against the configured issuer's JWKS and put the identity on
the Exchange. Failures are 401 with the reason (expired, wrong audience, unknown key, ...), never forwarded.

- Issuers: Cloudflare Access from the team name (`SPENDGATE_ACCESS_TEAM` → `https://<team>.cloudflareaccess.com`,
  keys at `/cdn-cgi/access/certs`), and any OIDC issuer (`SPENDGATE_JWT_ISSUER`; keys from
  `SPENDGATE_JWKS_URL` or the issuer's `/.well-known/openid-configuration`). The token's `iss` picks the issuer.
- Keys: fetched with the shared httpx client, cached by `kid`; an unknown `kid` refreshes the set at most once
  per 30 s (so a flood of made-up kids cannot hammer the IdP). Keys weaker than RSA-2048, EC keys on curves
  other than P-256/P-384, and entries that are not a loadable public key are left out of the set, so a token
  they signed is an unknown key (401). A key-set document that is not `{"keys": [...]}` counts as unavailable.
- Algorithms: RS256 and ES256 only — never `none`, never HS* (an HMAC "signed" with the public key is refused
  before any key is touched). `aud` must contain a configured audience (`SPENDGATE_JWT_AUDIENCE`, a list is
  allowed); `exp`/`nbf` with 30 s leeway; `iss` must match exactly.
- Identity: `sub`, `email`, groups from `SPENDGATE_JWT_GROUPS_CLAIM` (default `groups`); an Access service token
  (empty `sub`) is identified by its `common_name`. A signed token whose claims have the wrong shape (`sub` not a
  string, groups not a string or a list of strings, text with control characters, more than MAX_GROUPS groups)
  is a 401 too: the identity ends up in spend buckets, logs and headers, which need plain strings.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import json_error
from gateway.exchange import Exchange, Identity
from gateway.settings import Settings
from gateway.text import text_problem

ALGORITHMS = ["RS256", "ES256"]
LEEWAY = 30
REFRESH_INTERVAL = 30.0
MIN_RSA_BITS = 2048
EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
MAX_GROUPS = 1000
MAX_CLAIM_CHARS = 1000


class ClaimError(ValueError):
    """A signed token whose claims are not the shape an identity needs."""


def strong_key(key: object) -> bool:
    """A public key the gateway trusts signatures from: RSA of at least 2048 bits, or EC on P-256/P-384."""
    if isinstance(key, rsa.RSAPublicKey):
        return key.key_size >= MIN_RSA_BITS
    if isinstance(key, ec.EllipticCurvePublicKey):
        return isinstance(key.curve, EC_CURVES)
    return False  # a private key published by mistake, or another kind


def usable_key(data: object) -> jwt.PyJWK | None:
    """One entry of a JWK set as a verification key, or None when it is not one this gateway accepts."""
    if not isinstance(data, dict) or not isinstance(data.get("kid"), str):
        return None
    try:
        key = jwt.PyJWK(data)
    except Exception:  # the entry is the IdP's (or an attacker's) JSON: whatever fails to load is skipped
        return None
    if key.algorithm_name not in ALGORITHMS or not strong_key(key.key):
        return None
    return key


class JWKSCache:
    def __init__(self, url: str, client: httpx.AsyncClient, *, refresh_interval: float = REFRESH_INTERVAL) -> None:
        self.url = url
        self.client = client
        self.refresh_interval = refresh_interval
        self.keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self, kid: str) -> jwt.PyJWK | None:
        if kid in self.keys:
            return self.keys[kid]
        async with self._lock:
            if kid not in self.keys and time.monotonic() - self._fetched_at >= self.refresh_interval:
                await self._refresh()
        return self.keys.get(kid)

    async def _refresh(self) -> None:
        self._fetched_at = time.monotonic()
        response = await self.client.get(self.url, timeout=5)
        response.raise_for_status()
        document = response.json()
        entries = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(entries, list):
            raise ValueError("the JWKS document is not {\"keys\": [...]}")
        keys = {}
        for data in entries:
            key = usable_key(data)
            if key is not None:
                keys[data["kid"]] = key
        self.keys = keys


class JWTVerifier:
    def __init__(self, client: httpx.AsyncClient, *, issuers: dict[str, str | None], audience: tuple[str, ...],
                 groups_claim: str = "groups") -> None:
        """issuers: issuer URL -> JWKS URL (None: discover from the issuer's OpenID configuration)."""
        self.client = client
        self.issuers = issuers
        self.audience = audience
        self.groups_claim = groups_claim
        self._jwks: dict[str, JWKSCache] = {}

    @classmethod
    def from_settings(cls, settings: Settings, client: httpx.AsyncClient) -> JWTVerifier | None:
        issuers: dict[str, str | None] = {}
        if settings.access_team:
            issuer = f"https://{settings.access_team}.cloudflareaccess.com"
            issuers[issuer] = f"{issuer}/cdn-cgi/access/certs"
        if settings.jwt_issuer:
            issuers[settings.jwt_issuer.rstrip("/")] = settings.jwks_url
        if not issuers:
            return None
        return cls(client, issuers=issuers, audience=settings.jwt_audience, groups_claim=settings.jwt_groups_claim)

    async def _cache(self, issuer: str) -> JWKSCache:
        if issuer not in self._jwks:
            url = self.issuers[issuer]
            if url is None:
                response = await self.client.get(f"{issuer}/.well-known/openid-configuration", timeout=5)
                response.raise_for_status()
                document = response.json()
                url = document.get("jwks_uri") if isinstance(document, dict) else None
                if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                    raise ValueError("the OpenID configuration has no jwks_uri")
            self._jwks[issuer] = JWKSCache(url, self.client)
        return self._jwks[issuer]

    async def verify(self, token: str) -> tuple[Identity | None, str | None]:
        """(identity, None) or (None, reason)."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None, "malformed token"
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            return None, f"algorithm {alg!r} is not allowed"
        issuer = str(unverified.get("iss", "")).rstrip("/")
        if issuer not in self.issuers:
            return None, "unknown issuer"
        if not self.audience:
            return None, "no audience configured (SPENDGATE_JWT_AUDIENCE)"
        kid = header.get("kid")
        if not isinstance(kid, str):
            return None, "token has no key id (kid)"
        try:
            key = await (await self._cache(issuer)).get(kid)
        except (httpx.HTTPError, ValueError, KeyError):
            return None, "the identity provider's keys are unavailable"
        if key is None:
            return None, "unknown signing key (kid)"
        if key.algorithm_name != alg:
            return None, "the token's algorithm does not match its key"
        try:
            claims = jwt.decode(token, key=key, algorithms=[alg], audience=list(self.audience), issuer=issuer,
                                leeway=LEEWAY, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            return None, "token expired"
        except jwt.ImmatureSignatureError:
            return None, "token not yet valid"
        except jwt.InvalidAudienceError:
            return None, "wrong audience"
        except jwt.InvalidIssuerError:
            return None, "wrong issuer"
        except jwt.InvalidSignatureError:
            return None, "bad signature"
        except jwt.PyJWTError as exc:
            return None, f"invalid token: {exc}"
        try:
            return self.identity(claims), None
        except ClaimError as exc:
            return None, str(exc)

    def identity(self, claims: dict[str, Any]) -> Identity:
        """The caller named by verified claims; ClaimError when a claim has the wrong type or content."""
        sub = _text_claim(claims, "sub")
        groups = claims.get(self.groups_claim)
        if isinstance(groups, str):
            groups = [groups]
        if groups is None:
            groups = []
        if not isinstance(groups, list) or len(groups) > MAX_GROUPS or not all(isinstance(g, str) for g in groups):
            raise ClaimError(f"claim {self.groups_claim} must be a string or a list of at most {MAX_GROUPS} strings")
        for group in groups:
            _check_text(self.groups_claim, group)
        return Identity(
            user_id=sub or None,
            email=_text_claim(claims, "email"),
            groups=tuple(groups),
            service_token=_text_claim(claims, "common_name") if not sub else None,
        )


def _text_claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ClaimError(f"claim {name} must be a string")
    _check_text(name, value)
    return value


def _check_text(name: str, value: str) -> None:
    problem = text_problem(value) or (f"is longer than {MAX_CLAIM_CHARS} characters"
                                      if len(value) > MAX_CLAIM_CHARS else None)
    if problem:
        raise ClaimError(f"claim {name} {problem}")


class AccessIdentity:
    def __init__(self, app: ASGIApp, *, verifier: JWTVerifier | None) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ex = Exchange.of(scope)
        token = next((v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"cf-access-jwt-assertion"),
                     None)
        required = bool(ex.gateway and ex.gateway.settings.require_identity)
        if token and ex.identity is None:
            if self.verifier is None:
                reason: str | None = "no identity provider is configured on this gateway"
            else:
                identity, reason = await self.verifier.verify(token.strip())
                ex.identity = identity
        else:
            reason = None
        if reason is not None:
            ex.status_code, ex.error = 401, f"identity: {reason}"
            await json_error(401, f"Cf-Access-Jwt-Assertion: {reason}")(scope, receive, send)
            return
        if required and ex.identity is None:
            ex.status_code, ex.error = 401, "identity required"
            await json_error(401, "this gateway requires an identity (Cf-Access-Jwt-Assertion)")(scope, receive, send)
            return
        await self.app(scope, receive, send)
