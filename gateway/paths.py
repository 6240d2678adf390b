"""Where a request goes: `/{account}/{gateway}/{provider}/{rest}` relative to the chain's mount point.

`create_app` mounts the chain at `/v1`, so clients call `/v1/{account}/{gateway}/{provider}/{rest}` (and
`{prefix}/v1/...` when the whole app is mounted under a prefix). Every layer that needs the target calls
`locate(scope)`, which parses once and keeps the result on the Exchange (`exchange.where`).

The path is normalised before anything routes on it, and anything another parser could read differently is
refused rather than resolved (docs/refusals.md): dot segments (`.`, `..`), empty segments, percent-encoded
delimiters (`%2F`, `%3F`, `%23`, `%5C`, `%25`), and any character outside RFC 3986's path characters (so no
`?`, `#`, `\\`, space, NUL or other control character can reach the upstream URL, encoded or not).
"""

from __future__ import annotations

import re

from starlette._utils import get_route_path
from starlette.types import Scope

from gateway.exchange import Exchange, GatewayPath

__all__ = ["GatewayPath", "locate", "parse", "path_error"]

# RFC 3986 pchar without "%" (the path is already decoded once: a "%" left in it was encoded twice)
_PATH_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
# percent-encodings of characters that would change how the path splits or ends: / ? # \ % and controls
_ENCODED_DELIMITER = re.compile(rb"%(2[fF]|3[fF]|23|5[cC]|25|[01][0-9a-fA-F]|7[fF])")
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


def path_error(route_path: str, raw_path: bytes | None) -> str | None:
    """Why this decoded path (and its raw form, when the server gave it) cannot be routed; None when it can."""
    if raw_path is not None and _ENCODED_DELIMITER.search(raw_path):
        return "the path contains a percent-encoded delimiter or control character (%2F, %3F, %23, %5C, %25, %00...)"
    if not _PATH_CHARS.fullmatch(route_path):
        return "the path contains characters that are not allowed in a URL path (space, ?, #, \\, controls...)"
    segments = route_path.lstrip("/").split("/")
    if any(s in (".", "..") for s in segments):
        return "the path contains a dot segment (. or ..)"
    if any(not s for s in segments[:-1]):
        return "the path contains an empty segment (//)"
    return None


def parse(route_path: str, raw_path: bytes | None = None) -> GatewayPath | None:
    parts = route_path.lstrip("/").split("/", 3)
    if len(parts) < 3 or not all(parts[:3]):
        return None
    account, gateway, provider = parts[:3]
    rest = parts[3] if len(parts) == 4 else ""
    error = path_error(route_path, raw_path)
    if error is None and not (_ID.fullmatch(account) and _ID.fullmatch(gateway)):
        return None  # cannot name an account or gateway: answered 404 like any unknown one
    if error is not None and not (_ID.fullmatch(account) and _ID.fullmatch(gateway)):
        account = gateway = ""  # never looked up: there is no tenant to log this under
    return GatewayPath(account, gateway, provider, rest, error)


def locate(scope: Scope) -> GatewayPath | None:
    """Parse the request's target once per request and record it on the Exchange."""
    exchange = Exchange.of(scope)
    if exchange.where is not None:
        return exchange.where
    target = parse(get_route_path(scope), scope.get("raw_path"))
    if target is not None:
        exchange.where = target
        if target.account:
            exchange.account_id, exchange.gateway_id = target.account, target.gateway
        if target.error is None:
            exchange.provider, exchange.path = target.provider, target.rest
    return target
