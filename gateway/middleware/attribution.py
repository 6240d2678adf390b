"""Attribution: `cf-aig-metadata` (a flat JSON object, at most 5 entries, string/number/boolean values) plus the
verified identity under reserved `cf.*` keys (`cf.user_id`, `cf.user.email`, `cf.user.groups`,
`cf.service_token`), which no client header can set: a client key starting `cf.` is a 400.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import json_error
from gateway.exchange import Exchange, Identity

MAX_ENTRIES = 5
HEADER = "cf-aig-metadata"


class MetadataError(ValueError):
    pass


def parse_metadata(raw: str | None) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise MetadataError(f"{HEADER} must be a JSON object") from None
    if not isinstance(data, dict):
        raise MetadataError(f"{HEADER} must be a JSON object")
    if len(data) > MAX_ENTRIES:
        raise MetadataError(f"{HEADER} allows at most {MAX_ENTRIES} entries, got {len(data)}")
    for key, value in data.items():
        if key.startswith("cf."):
            raise MetadataError(f"{HEADER}: keys starting with 'cf.' are reserved for the verified identity ({key})")
        if not key or len(key) > 64:
            raise MetadataError(f"{HEADER}: keys must be 1-64 characters")
        if not isinstance(value, str | int | float | bool) or value is None:
            raise MetadataError(f"{HEADER}: the value of {key!r} must be a string, number or boolean (no nesting)")
        if isinstance(value, str) and len(value) > 1024:
            raise MetadataError(f"{HEADER}: the value of {key!r} is longer than 1024 characters")
    return data


def identity_metadata(identity: Identity | None) -> dict[str, Any]:
    if identity is None:
        return {}
    out: dict[str, Any] = {}
    if identity.user_id:
        out["cf.user_id"] = identity.user_id
    if identity.email:
        out["cf.user.email"] = identity.email
    if identity.groups:
        out["cf.user.groups"] = list(identity.groups)
    if identity.service_token:
        out["cf.service_token"] = identity.service_token
    return out


class Attribution:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ex = Exchange.of(scope)
        raw = next((v.decode("utf-8", "replace") for k, v in scope["headers"] if k.lower() == b"cf-aig-metadata"),
                   None)
        try:
            client = parse_metadata(raw)
        except MetadataError as exc:
            ex.status_code, ex.error = 400, str(exc)
            await json_error(400, str(exc), header=HEADER)(scope, receive, send)
            return
        ex.metadata = {**client, **identity_metadata(ex.identity)}  # identity last: it always wins
        await self.app(scope, receive, send)
