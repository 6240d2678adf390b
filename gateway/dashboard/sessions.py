"""Dashboard sessions: the admin token, typed once on the sign-in page, is exchanged for a signed cookie.

Nothing is stored on the server, so every gateway instance behind a load balancer accepts the same session. A
session is `<expires>.<nonce>.<signature>`: the expiry in Unix seconds, 16 random bytes, and an HMAC-SHA256 of
both under a key derived from the SHA-256 of the current admin token. Replacing the token
(`spendgate admin-token rotate`, or a new `SPENDGATE_ADMIN_TOKEN`) therefore ends every session at once;
signing out removes the cookie from the browser it was sent from.

The cookie is HttpOnly (page scripts never see it) and SameSite=Strict (no other site's page can make the
browser send it). Requests that change something also carry a CSRF token bound to the session (an HMAC of its
nonce), sent by the dashboard's own script in a header that a form on another site cannot set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

SESSION_SECONDS = 12 * 3600
COOKIE = "spendgate_dashboard"
CSRF_HEADER = "x-spendgate-csrf"
_SHAPE = re.compile(r"([0-9]{1,12})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(frozen=True)
class Session:
    nonce: str
    expires_at: int  # Unix seconds
    csrf: str  # what the page sends back in the CSRF header


class Sessions:
    """Issues and checks session cookies. `check(token)` decides whether a token is the admin token; `digest()`
    is the SHA-256 (hex) of the current one (gateway.admin.token.AdminTokenCheck has both)."""

    def __init__(self, check: Callable[[str | None], Awaitable[bool]], digest: Callable[[], Awaitable[str | None]],
                 *, lifetime: int = SESSION_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self.check = check
        self.digest = digest
        self.lifetime = lifetime
        self.clock = clock

    async def _key(self) -> bytes | None:
        digest = await self.digest()
        if digest is None:
            return None
        return hmac.new(digest.encode(), b"spendgate dashboard session v1", hashlib.sha256).digest()

    @staticmethod
    def _sign(key: bytes, text: str) -> str:
        return _b64(hmac.new(key, text.encode(), hashlib.sha256).digest())

    async def sign_in(self, token: str) -> tuple[str, Session] | None:
        """The cookie value and its session when `token` is the admin token; None otherwise."""
        if not token or not await self.check(token):
            return None
        key = await self._key()
        if key is None:
            return None
        expires = int(self.clock()) + self.lifetime
        nonce = _b64(secrets.token_bytes(16))
        body = f"{expires}.{nonce}"
        return f"{body}.{self._sign(key, body)}", Session(nonce, expires, self._sign(key, "csrf." + nonce))

    async def verify(self, value: str | None) -> Session | None:
        """The session a cookie value stands for, or None: malformed, forged, signed under a replaced token, or
        expired."""
        if not value:
            return None
        match = _SHAPE.fullmatch(value)
        if match is None:
            return None
        expires, nonce, signature = int(match[1]), match[2], match[3]
        if expires <= self.clock():
            return None
        key = await self._key()
        if key is None or not hmac.compare_digest(self._sign(key, f"{expires}.{nonce}"), signature):
            return None
        return Session(nonce, expires, self._sign(key, "csrf." + nonce))

    @staticmethod
    def csrf_ok(session: Session, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(session.csrf.encode(), presented.encode())
