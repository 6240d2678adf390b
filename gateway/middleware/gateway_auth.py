"""GatewayAuth: when a gateway has `authentication` on, a request needs a gateway token in
`cf-aig-authorization: Bearer <token>` — or a valid Access/OIDC JWT in `Cf-Access-Jwt-Assertion` (verified by
the same verifier AccessIdentity uses; the identity it yields is kept so it is verified only once).
Missing or invalid → 401 JSON error; nothing goes further in.

A gateway token may also come where a provider key goes (`Authorization: Bearer`, `x-api-key`, `x-goog-api-key`,
Gemini's `?key=`), as Cloudflare's documented SDK set-ups send it: recognised by its `sgk_` prefix, verified the
same way (401 when it is not one of this gateway's), never forwarded, and the call is billed as if no provider key
was sent (a stored key, else unified billing).

Tokens are minted and stored by gateway/tokens.py, as SHA-256 hashes; each instance caches a gateway's hashes
until a NOTIFY says they changed (revoking a token applies on every instance within a second).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import GatewayTokenRejected, IdentityRejected, UnknownAccount, UnknownGateway, to_response
from gateway.exchange import Exchange
from gateway.gateways import GatewayStore
from gateway.identity import JWTVerifier
from gateway.paths import locate
from gateway.providers.forward import KEY_HEADERS
from gateway.tokens import TOKEN_PREFIX, TokenStore


def _token_in_key_position(scope: Scope) -> str | None:
    """A gateway token sent where a provider key goes (`Authorization: Bearer`, `x-api-key`, `x-goog-api-key`, or
    Gemini's `?key=`)."""
    for name, value in scope["headers"]:
        if name.lower() in _KEY_HEADER_NAMES:
            text = str(value.decode("latin-1")).strip()
            if text.lower().startswith("bearer "):
                text = text[7:].strip()
            if text.startswith(TOKEN_PREFIX):
                return text
    query: bytes = scope.get("query_string", b"")
    if _TOKEN_PREFIX_BYTES not in query and b"%" not in query:
        return None  # no parameter can decode to a token: nothing to parse
    for key, given in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if key == "key" and given.startswith(TOKEN_PREFIX):
            return given
    return None


_KEY_HEADER_NAMES = frozenset(name.encode("latin-1") for name in KEY_HEADERS)
_TOKEN_PREFIX_BYTES = TOKEN_PREFIX.encode("latin-1")


def _without_provider_keys(scope: Scope) -> Scope:
    """The request as if no provider key was sent: the key headers and Gemini's `key` parameter removed."""
    headers = [(k, v) for k, v in scope["headers"] if k.decode("latin-1").lower() not in KEY_HEADERS]
    pairs = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
             if k != "key"]
    return {**scope, "headers": headers, "query_string": urlencode(pairs).encode("latin-1")}


def header(scope: Scope, name: bytes) -> str | None:
    value = Exchange.of(scope).header(scope, name)
    return value.decode("latin-1") if value is not None else None


class GatewayAuth:
    def __init__(self, app: ASGIApp, *, gateways: GatewayStore, tokens: TokenStore,
                 verifier: JWTVerifier | None = None) -> None:
        self.app = app
        self.gateways = gateways
        self.tokens = tokens
        self.verifier = verifier  # when identity is configured

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ex = Exchange.of(scope)
        where = locate(scope)
        if where is None or not where.account:  # no tenant: the router answers 404 or 400
            await self.app(scope, receive, send)
            return
        try:
            gateway = ex.gateway or await self.gateways.get(where.account, where.gateway)
        except (UnknownAccount, UnknownGateway):
            await self.app(scope, receive, send)  # the router answers 404
            return
        ex.gateway = gateway
        found = _token_in_key_position(scope)
        if found is not None:
            # Cloudflare's documented SDK set-ups put the gateway token where the provider key goes: it is checked
            # like cf-aig-authorization, never forwarded, and the call goes on as if no provider key was sent
            if not await self.tokens.valid(gateway.account_id, gateway.id, found):
                await _refuse(scope, receive, send, ex, "invalid gateway token (in the provider key's place)")
                return
            ex.authenticated = True
            scope = _without_provider_keys(scope)
            await self.app(scope, receive, send)
            return
        if not gateway.settings.authentication:
            await self.app(scope, receive, send)
            return
        reason = "missing gateway token (cf-aig-authorization: Bearer <token>)"
        value = header(scope, b"cf-aig-authorization")
        if value is not None:
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip() and await self.tokens.valid(
                    gateway.account_id, gateway.id, token.strip()):
                ex.authenticated = True
                await self.app(scope, receive, send)
                return
            reason = "invalid gateway token"
        jwt = header(scope, b"cf-access-jwt-assertion")
        if jwt and self.verifier is not None:
            try:
                ex.identity = await self.verifier.verify(jwt)
            except IdentityRejected as exc:
                reason = f"invalid Access token: {exc.reason}"
            else:
                ex.authenticated = True
                await self.app(scope, receive, send)
                return
        await _refuse(scope, receive, send, ex, reason)


async def _refuse(scope: Scope, receive: Receive, send: Send, ex: Exchange, reason: str) -> None:
    answer = to_response(GatewayTokenRejected(reason))
    ex.status_code, ex.error = answer.status, reason
    await answer.render()(scope, receive, send)
