"""Who is calling: verify an Access / OIDC JWT (`Cf-Access-Jwt-Assertion`) against the configured issuer's JWKS and
name the identity it carries. Used by AccessIdentity and GatewayAuth (gateway/middleware/); a token that does not
verify raises IdentityRejected with the reason (expired, wrong audience, unknown key, ...).

- Issuers: Cloudflare Access from the team name (`SPENDGATE_ACCESS_TEAM` → `https://<team>.cloudflareaccess.com`,
  keys at `/cdn-cgi/access/certs`), and any OIDC issuer (`SPENDGATE_JWT_ISSUER`; keys from
  `SPENDGATE_JWKS_URL` or the issuer's `/.well-known/openid-configuration`). The token's `iss` picks the issuer.
- Keys: fetched with the shared httpx client, cached by `kid`; an unknown `kid` refreshes the set at most once
  per 30 s (so a flood of made-up kids cannot hammer the IdP). Keys weaker than RSA-2048, EC keys on curves
  other than P-256/P-384, and entries that are not a loadable public key are left out of the set, so a token
  they signed is an unknown key. A key-set document that is not `{"keys": [...]}` counts as unavailable.
- Algorithms: RS256, ES256 and ES384 (P-384 keys) only — never `none`, never HS* (an HMAC "signed" with the public
  key is refused before any key is touched). `aud` must contain a configured audience (`SPENDGATE_JWT_AUDIENCE`, a
  list is allowed); `exp`/`nbf` with 30 s leeway; `iss` must name a configured issuer (a trailing slash aside:
  Auth0 writes one). An issuer discovered through its OpenID configuration is looked up once at a time, and a
  failed lookup is not tried again for 30 s either.
- Identity: `sub`, `email`, groups from `SPENDGATE_JWT_GROUPS_CLAIM` (default `groups`); an Access service token
  (empty `sub`) is identified by its `common_name`. A signed token whose claims have the wrong shape (`sub` not a
  string, groups not a string or a list of strings, text with control characters, more than MAX_GROUPS groups)
  is refused too (ClaimError): the identity ends up in spend buckets, logs and headers, which need plain strings.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import ClaimError, IdentityRejected
from gateway.exchange import Identity
from gateway.settings import Settings
from gateway.text import text_problem

ALGORITHMS = ["RS256", "ES256", "ES384"]
LEEWAY = 30
REFRESH_INTERVAL = 30.0
MIN_RSA_BITS = 2048
EC_CURVES = (ec.SECP256R1, ec.SECP384R1)
MAX_GROUPS = 1000
MAX_CLAIM_CHARS = 1000


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
        self._locks: dict[str, asyncio.Lock] = {}  # one discovery at a time per issuer
        self._failed_at: dict[str, float] = {}  # an issuer's last failed discovery: not tried again for 30 s

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
        """The issuer's key cache. Anyone can send a token naming a configured issuer before any signature is checked,
        so its discovery runs once at a time (concurrent first tokens share it) and, failed, waits 30 s."""
        cache = self._jwks.get(issuer)
        if cache is not None:
            return cache
        async with self._locks.setdefault(issuer, asyncio.Lock()):
            cache = self._jwks.get(issuer)
            if cache is not None:
                return cache
            if time.monotonic() - self._failed_at.get(issuer, float("-inf")) < REFRESH_INTERVAL:
                raise ValueError("the OpenID configuration was unavailable moments ago")
            url = self.issuers[issuer]
            if url is None:
                try:
                    url = await self._discover(issuer)
                except (httpx.HTTPError, ValueError):
                    self._failed_at[issuer] = time.monotonic()
                    raise
            cache = self._jwks[issuer] = JWKSCache(url, self.client)
            return cache

    async def _discover(self, issuer: str) -> str:
        response = await self.client.get(f"{issuer}/.well-known/openid-configuration", timeout=5)
        response.raise_for_status()
        document = response.json()
        url = document.get("jwks_uri") if isinstance(document, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ValueError("the OpenID configuration has no jwks_uri")
        return url

    async def verify(self, token: str) -> Identity:
        """The identity a token names; IdentityRejected (ClaimError for claims of the wrong shape) says why not."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise IdentityRejected("malformed token") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise IdentityRejected(f"algorithm {alg!r} is not allowed")
        issuer = str(unverified.get("iss", "")).rstrip("/")
        if issuer not in self.issuers:
            raise IdentityRejected("unknown issuer")
        if not self.audience:
            raise IdentityRejected("no audience configured (SPENDGATE_JWT_AUDIENCE)")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise IdentityRejected("token has no key id (kid)")
        try:
            key = await (await self._cache(issuer)).get(kid)
        except (httpx.HTTPError, ValueError, KeyError):
            raise IdentityRejected("the identity provider's keys are unavailable") from None
        if key is None:
            raise IdentityRejected("unknown signing key (kid)")
        if key.algorithm_name != alg:
            raise IdentityRejected("the token's algorithm does not match its key")
        try:
            # `iss` as the token spells it: it names a configured issuer (checked above, a trailing slash aside)
            claims = jwt.decode(token, key=key, algorithms=[alg], audience=list(self.audience),
                                issuer=str(unverified.get("iss")),
                                leeway=LEEWAY, options={"require": ["exp", "iss", "aud"]})
        except jwt.ExpiredSignatureError:
            raise IdentityRejected("token expired") from None
        except jwt.ImmatureSignatureError:
            raise IdentityRejected("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise IdentityRejected("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise IdentityRejected("wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise IdentityRejected("bad signature") from None
        except jwt.PyJWTError as exc:
            raise IdentityRejected(f"invalid token: {exc}") from None
        return self.identity(claims)

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
