"""AccessIdentity: verify `Cf-Access-Jwt-Assertion` (gateway/identity.py) and put the identity on the Exchange.
A token that does not verify is refused (401, gateway/errors.py: IdentityRejected, with the reason: expired,
wrong audience, unknown key, ...), never forwarded; so is a request without one on a gateway that sets
`require_identity` (IdentityRequired).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import IdentityRejected, IdentityRequired, to_response
from gateway.exchange import Exchange
from gateway.identity import JWTVerifier


class AccessIdentity:
    def __init__(self, app: ASGIApp, *, verifier: JWTVerifier | None) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ex = Exchange.of(scope)
        raw = ex.header(scope, b"cf-access-jwt-assertion")
        token = raw.decode("latin-1") if raw is not None else None
        required = bool(ex.gateway and ex.gateway.settings.require_identity)
        try:
            if token and ex.identity is None:
                if self.verifier is None:
                    raise IdentityRejected("no identity provider is configured on this gateway")
                ex.identity = await self.verifier.verify(token.strip())
            if required and ex.identity is None:
                raise IdentityRequired()
        except IdentityRejected as exc:
            await self._refuse(scope, receive, send, ex, exc, f"identity: {exc.reason}")
            return
        except IdentityRequired as exc:
            await self._refuse(scope, receive, send, ex, exc, "identity required")
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, ex: Exchange,
                      error: IdentityRejected | IdentityRequired, logged: str) -> None:
        answer = to_response(error)
        ex.status_code, ex.error = answer.status, logged
        await answer.render()(scope, receive, send)
