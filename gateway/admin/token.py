"""The admin API's bearer token.

`SPENDGATE_ADMIN_TOKEN` wins when set. Otherwise the first instance to start generates one, stores only its
SHA-256 in `admin_tokens`, and prints it once on stderr, framed so that it stands out from the JSON log lines;
later starts find the hash (`spendgate serve` says so in one line, `STORED_NOTICE`).
`spendgate admin-token rotate` replaces it (and prints the new one once). Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
import time

from gateway.db import Database


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "sgadm_" + secrets.token_urlsafe(32)


STORED_NOTICE = ("spendgate: the admin API token is stored (only its SHA-256); to replace it, run "
                 "`spendgate admin-token rotate`")


def framed_token(token: str) -> str:
    """The one time a generated token is shown: plain text between blank lines and rules, not a JSON log line."""
    rule = "=" * 78
    return "\n".join([
        "", rule,
        "  spendgate generated the admin API token. It is shown this once: store it now.",
        "",
        f"      {token}",
        "",
        "  Send it as `Authorization: Bearer <token>` to /admin. Only its SHA-256 is stored;",
        "  `spendgate admin-token rotate` replaces it.",
        rule, "",
    ])


async def ensure_admin_token(db: Database, configured: str | None, *, announce: bool = True) -> str | None:
    """Make sure an admin token exists; returns the new token when one was generated now."""
    if configured:
        return None
    token = new_token()
    inserted = await db.pool.fetchval(
        "INSERT INTO admin_tokens (id, token_sha256) VALUES (1, $1) ON CONFLICT (id) DO NOTHING RETURNING 1",
        _digest(token),
    )
    if not inserted:
        return None
    if announce:
        print(framed_token(token), file=sys.stderr, flush=True)
    return token


async def rotate_admin_token(db: Database) -> str:
    token = new_token()
    await db.pool.execute(
        "INSERT INTO admin_tokens (id, token_sha256) VALUES (1, $1) "
        "ON CONFLICT (id) DO UPDATE SET token_sha256 = EXCLUDED.token_sha256, created_at = now()",
        _digest(token),
    )
    return token


class AdminTokenCheck:
    """authenticate(bearer) for create_admin_app; the stored hash is cached for a few seconds."""

    def __init__(self, db: Database, configured: str | None, *, cache_seconds: float = 5.0) -> None:
        self.db = db
        self.configured_digest = _digest(configured) if configured else None
        self.cache_seconds = cache_seconds
        self._stored: tuple[float, str | None] | None = None

    async def __call__(self, token: str | None) -> bool:
        if not token:
            return False
        expected = await self.digest()
        return expected is not None and hmac.compare_digest(_digest(token), expected)

    async def digest(self) -> str | None:
        """The SHA-256 (hex) of the current admin token; None while there is none. The dashboard derives the key
        that signs its sessions from it, so that replacing the token ends every session."""
        return self.configured_digest or await self._stored_digest()

    async def _stored_digest(self) -> str | None:
        now = time.monotonic()
        if self._stored is None or now - self._stored[0] > self.cache_seconds:
            value = await self.db.pool.fetchval("SELECT token_sha256 FROM admin_tokens WHERE id = 1")
            self._stored = (now, value)
        return self._stored[1]
