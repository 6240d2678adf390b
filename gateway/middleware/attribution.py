"""Attribution: `cf-aig-metadata` (a flat JSON object, at most 5 entries, string/number/boolean values) plus the
verified identity under reserved `cf.*` keys (`cf.user_id`, `cf.user.email`, `cf.user.groups`,
`cf.service_token`), which no client header can set: a client key starting `cf.` is a 400.

The header is checked at the door so that one client's metadata can never break what is built from it later
(the log row's jsonb, spend-limit bucket keys, the JSON answers that render them). Refused with a 400 naming
the header:

- `NaN`, `Infinity`, `-Infinity` (Python's json accepts them; JSON, Postgres jsonb and our JSON answers do not),
  and numbers that overflow to infinity (`1e400`);
- integers outside +-(2**53 - 1): beyond it JSON readers (JavaScript, most dashboards) round them, so two
  different buckets or log values would read as the same number;
- control characters U+0000-U+001F and U+007F in keys or values: NUL is refused by Postgres text and jsonb,
  CR/LF/TAB and ESC would let a value forge lines or terminal escapes wherever logs are exported or printed;
- lone surrogates (`"\\ud800"`): they cannot be encoded as UTF-8, so Postgres and every JSON answer refuse them;
- nesting deeper than the parser's recursion limit, and headers longer than `MAX_HEADER_CHARS`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import MetadataError, to_response
from gateway.exchange import Exchange, Identity

MAX_ENTRIES = 5
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 1024
# The largest legitimate header: 5 keys and 5 values at their limits, every character sent as a JSON escape of a
# surrogate pair (12 bytes). Anything longer is refused before it is parsed.
MAX_HEADER_CHARS = MAX_ENTRIES * (MAX_KEY_CHARS + MAX_VALUE_CHARS) * 12 + 1024
MAX_SAFE_INTEGER = 2**53 - 1
HEADER = "cf-aig-metadata"

_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def _refuse_constant(name: str) -> NoReturn:
    raise MetadataError(f"{HEADER}: {name} is not a JSON number")


def _shown(text: str) -> str:
    """A client's key as it may appear in an error message: escaped (repr) and short."""
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _check_text(text: str, what: str) -> None:
    found = _FORBIDDEN_CHARS.search(text)
    if found is None:
        return
    char = found.group()
    kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
    raise MetadataError(f"{HEADER}: {what} contains {kind} (U+{ord(char):04X})")


def parse_metadata(raw: str | None) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    if len(raw) > MAX_HEADER_CHARS:
        raise MetadataError(f"{HEADER} is longer than {MAX_HEADER_CHARS} characters")
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except MetadataError:
        raise
    except RecursionError:  # "[[[[..." deeper than the parser's recursion limit
        raise MetadataError(f"{HEADER} must be a flat JSON object (it is nested too deeply)") from None
    except ValueError:
        raise MetadataError(f"{HEADER} must be a JSON object") from None
    if not isinstance(data, dict):
        raise MetadataError(f"{HEADER} must be a JSON object")
    if len(data) > MAX_ENTRIES:
        raise MetadataError(f"{HEADER} allows at most {MAX_ENTRIES} entries, got {len(data)}")
    for key, value in data.items():
        # length and characters first: the later messages show the key
        if not key or len(key) > MAX_KEY_CHARS:
            raise MetadataError(f"{HEADER}: keys must be 1-{MAX_KEY_CHARS} characters")
        _check_text(key, "a key")
        if key.startswith("cf."):
            raise MetadataError(f"{HEADER}: keys starting with 'cf.' are reserved for the verified identity "
                                f"({_shown(key)})")
        if not isinstance(value, str | int | float | bool) or value is None:
            raise MetadataError(f"{HEADER}: the value of {_shown(key)} must be a string, number or boolean "
                                "(no nesting)")
        if isinstance(value, str):
            if len(value) > MAX_VALUE_CHARS:
                raise MetadataError(f"{HEADER}: the value of {_shown(key)} is longer than {MAX_VALUE_CHARS} "
                                    "characters")
            _check_text(value, f"the value of {_shown(key)}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise MetadataError(f"{HEADER}: the value of {_shown(key)} is not a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
            raise MetadataError(f"{HEADER}: the value of {_shown(key)} is outside +-(2**53 - 1); send it as a "
                                "string")
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
        value = ex.header(scope, b"cf-aig-metadata")
        raw = value.decode("utf-8", "replace") if value is not None else None
        try:
            client = parse_metadata(raw)
        except MetadataError as exc:
            answer = to_response(exc)
            ex.status_code, ex.error = answer.status, str(exc)
            await answer.render()(scope, receive, send)
            return
        ex.metadata = {**client, **identity_metadata(ex.identity)}  # identity last: it always wins
        await self.app(scope, receive, send)
