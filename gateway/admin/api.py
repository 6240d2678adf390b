"""A small declarative router for the admin API: each capability module declares its endpoints on an
`AdminRouter`; `create_admin_app` mounts them behind the bearer token, wraps results in the response shape of
the README, turns `AdminError` (and the domain errors) into JSON errors, and serves `GET /admin/openapi.json`
generated from the same declarations, so the document cannot drift from the routes.

Shapes: success `{"success": true, "result": ...}` (lists add `result_info.next_cursor`); error
`{"success": false, "error": {"message": ..., "field": ...}}` with 401 / 404 / 409 / 422.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.admin import docs
from gateway.db import unavailable
from gateway.errors import AdminError as AdminError
from gateway.errors import GatewayError, InvalidAmount, json_error, to_response
from gateway.gateways import valid_id
from gateway.money import BIGINT_MAX, parse_usd, to_nano
from gateway.text import text_problem

if TYPE_CHECKING:  # the operator commands import the admin endpoints without the serving machinery
    from gateway.db import Database
    from gateway.gateways import GatewayStore
    from gateway.ledger import Ledger
    from gateway.limits.store import LimitStore
    from gateway.providers.store import ProviderStore
    from gateway.routes.store import RouteStore
    from gateway.tokens import TokenStore

log = logging.getLogger("spendgate.admin")
T = TypeVar("T")


class AdminServices(Protocol):
    """What the admin endpoints use: a serving process's gateway.services.Running, or an operator command's
    gateway.admin.cli_db.OperatorServices."""

    @property
    def db(self) -> Database: ...
    @property
    def gateways(self) -> GatewayStore: ...
    @property
    def ledger(self) -> Ledger: ...
    @property
    def providers(self) -> ProviderStore: ...
    @property
    def tokens(self) -> TokenStore: ...
    @property
    def limit_store(self) -> LimitStore: ...
    @property
    def route_store(self) -> RouteStore: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...


def admin_error(error: GatewayError) -> AdminError:
    """A domain error as the admin API answers it (gateway/errors.py maps it: status, message, field)."""
    answer = to_response(error)
    return AdminError(answer.status, answer.message, answer.fields.get("field"))


def not_found(what: str) -> AdminError:
    return AdminError(404, f"{what} not found")


@dataclass
class Page:
    """A list result with the cursor of the next page (None: last page)."""

    items: list[Any]
    next_cursor: str | None = None


@dataclass
class Created:
    result: Any
    status: int = 201


Handler = Callable[..., Awaitable[Any]]


@dataclass
class Endpoint:
    method: str
    path: str
    summary: str
    handler: Handler
    body: dict[str, Any] | None = None  # JSON schema of the request body
    query: dict[str, str] = field(default_factory=dict)  # name -> description
    paginated: bool = False


class AdminRouter:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.endpoints: list[Endpoint] = []

    def route(
        self, method: str, path: str, summary: str, *, body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None, paginated: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.endpoints.append(Endpoint(method, path, summary, handler, body, dict(query or {}), paginated))
            return handler

        return register


# -- request helpers -------------------------------------------------------------------------------------------
#
# Everything an operator sends is checked here before any handler or query sees it: a body is a JSON object of
# bounded size and depth, without NaN/Infinity, without integers past BIGINT and without control characters or
# lone surrogates in any string (Postgres cannot store NUL in text or JSONB, and a newline in an id or a name is
# never meant); path parameters and query parameters get the same text check. A refusal is a 4xx naming the field.

MAX_BODY_BYTES = 1_000_000
MAX_DEPTH = 32  # deeper than any admin body is; bounds the recursion of everything that walks the body later
MAX_PARAM_CHARS = 2000
MAX_CURSOR_CHARS = 1000
MAX_PAGE = 500
ID_PATHS = ("account", "gateway")  # path parameters that are account or gateway ids
PATH_NOUNS = {"key_id": "provider key", "token_id": "token", "rule_id": "rule", "policy_id": "policy",
              "log_id": "log", "name": "route", "slug": "custom provider"}


def shown(text: str) -> str:
    """An operator's value as it may appear in a message: escaped and short."""
    text = repr(text)
    return text if len(text) <= 80 else text[:77] + "..."


def _walk(data: Any) -> None:
    """Refuse deep nesting, huge integers and unstorable text anywhere in a parsed body (iteratively)."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise AdminError(422, f"nested deeper than {MAX_DEPTH} levels", where or None)
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise AdminError(422, f"{where or 'body'} {problem}", where or None)
        elif isinstance(value, float) and not math.isfinite(value):  # NaN, Infinity, or 1e400 parsed as inf
            raise AdminError(422, f"{where} must be a finite number", where or None)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > BIGINT_MAX:
            raise AdminError(422, f"{where} is out of range", where or None)
        elif isinstance(value, dict):
            for key, item in value.items():
                path = f"{where}.{key}" if where else key
                problem = text_problem(key)
                if problem:
                    raise AdminError(422, f"a field name {problem}", shown(path))
                stack.append((item, path, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))


async def _read_body(request: Request) -> bytes:
    """The body, refused (413) as soon as it passes MAX_BODY_BYTES rather than after it is all in memory."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise AdminError(413, "request body too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request: Request) -> dict[str, Any]:
    raw = await _read_body(request)
    try:
        data = json.loads(raw or b"{}")
    except RecursionError:  # "[" * 100000: the parser recurses once per level
        raise AdminError(422, f"body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise AdminError(422, "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise AdminError(422, "body must be a JSON object")
    _walk(data)
    return data


def usd_field(data: dict[str, Any], name: str, *, allow_zero: bool = False, required: bool = True) -> int | None:
    if name not in data or data[name] is None:
        if required:
            raise AdminError(422, f"{name} is required", name)
        return None
    try:
        return to_nano(parse_usd(data[name], field=name, allow_zero=allow_zero))
    except InvalidAmount as exc:
        raise AdminError(422, str(exc), name) from None


def str_field(data: dict[str, Any], name: str, *, choices: tuple[str, ...] | None = None, required: bool = True,
              max_length: int = 200) -> str | None:
    value = data.get(name)
    if value is None:
        if required:
            raise AdminError(422, f"{name} is required", name)
        return None
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise AdminError(422, f"{name} must be a non-empty string of at most {max_length} characters", name)
    if choices is not None and value not in choices:
        raise AdminError(422, f"{name} must be one of {', '.join(choices)}", name)
    return value


def check_path(params: dict[str, str]) -> None:
    """A path parameter that cannot name anything (an account id outside the id pattern, a control character)
    is a 404 before any query runs."""
    for name, value in params.items():
        valid = valid_id(value) if name in ID_PATHS else len(value) <= 200 and text_problem(value) is None
        if not valid:
            raise not_found(f"{PATH_NOUNS.get(name, name)} {shown(value)}")


def check_query(request: Request) -> None:
    for name, value in request.query_params.multi_items():
        for text in (name, value):
            problem = text_problem(text)
            if problem or len(text) > MAX_PARAM_CHARS:
                field = name if text_problem(name) is None and len(name) <= 100 else shown(name)
                raise AdminError(422, f"query parameter {shown(name)} {problem or 'is too long'}", field)


# -- lists -----------------------------------------------------------------------------------------------------
#
# Every list endpoint pages the same way: `?limit=` (1-500, default 100) and `?cursor=` (the `next_cursor` of the
# previous page, opaque), `result_info.next_cursor` null on the last page. Lists are ordered by a unique key and
# a page starts after the previous page's last key (keyset, never OFFSET), so a row created or deleted between
# two pages neither shifts nor repeats the others. A cursor is the base64url JSON array of that key; its parts
# are checked against the endpoint's key kinds before any query sees them.

CursorKind = str  # "text" | "int" | "uuid" | "time" (ISO 8601 with a zone)
DEFAULT_PAGE = 100


def page_params(request: Request, *kinds: CursorKind) -> tuple[tuple[Any, ...] | None, int]:
    """(the key to start after, or None for the first page; limit) from ?cursor=&limit=, the cursor decoded to
    one value per kind: str, int, uuid.UUID or an aware datetime in UTC."""
    raw_limit = request.query_params.get("limit", str(DEFAULT_PAGE))
    if not re.fullmatch(r"[0-9]{1,6}", raw_limit) or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise AdminError(422, f"limit must be an integer between 1 and {MAX_PAGE}", "limit")
    limit = int(raw_limit)
    cursor = request.query_params.get("cursor")
    if not cursor:  # absent, or empty (a client passing on a null next_cursor): the first page
        return None, limit
    if len(cursor) > MAX_CURSOR_CHARS:
        raise invalid_cursor()
    try:
        parts = json.loads(base64.b64decode(cursor.encode(), altchars=b"-_", validate=True))
    except (ValueError, RecursionError):
        raise invalid_cursor() from None
    if not isinstance(parts, list) or len(parts) != len(kinds):
        raise invalid_cursor()
    return tuple(_cursor_part(part, kind) for part, kind in zip(parts, kinds, strict=True)), limit


def _cursor_part(part: Any, kind: CursorKind) -> Any:
    if kind == "int":
        if type(part) is not int or abs(part) > BIGINT_MAX:
            raise invalid_cursor()
        return part
    if not isinstance(part, str) or len(part) > MAX_CURSOR_CHARS or text_problem(part):
        raise invalid_cursor()
    try:
        if kind == "uuid":
            return uuid.UUID(part)
        if kind == "time":
            at = datetime.fromisoformat(part)
            if at.tzinfo is None:
                raise ValueError("naive time")
            return at.astimezone(UTC)
    except (ValueError, OverflowError):
        raise invalid_cursor() from None
    return part


def invalid_cursor() -> AdminError:
    return AdminError(422, "invalid cursor: pass result_info.next_cursor as it was returned", "cursor")


def encode_cursor(key: tuple[Any, ...]) -> str:
    parts = [k.isoformat() if isinstance(k, datetime) else str(k) if isinstance(k, uuid.UUID) else k for k in key]
    return base64.urlsafe_b64encode(json.dumps(parts, separators=(",", ":")).encode()).decode()


def page_of(rows: Sequence[T], limit: int, key: Callable[[T], tuple[Any, ...]],
            view: Callable[[T], Any] = lambda row: row) -> Page:
    """A page from `limit + 1` rows in key order: the first `limit`, and the cursor after the last of them when
    there was one more."""
    next_cursor = encode_cursor(key(rows[limit - 1])) if len(rows) > limit else None
    return Page([view(row) for row in rows[:limit]], next_cursor)


def parse_time(request: Request, name: str) -> datetime | None:
    """An ISO 8601 time with a zone from the query, in UTC (a time that falls outside datetime's range in UTC is
    refused here, not in the database driver)."""
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise AdminError(422, f"{name} must be an ISO 8601 time, e.g. 2026-11-01T00:00:00Z", name) from None
    if value.tzinfo is None:
        raise AdminError(422, f"{name} must include a time zone (Z or +00:00)", name)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise AdminError(422, f"{name} is out of range", name) from None


def time_range(request: Request) -> tuple[datetime | None, datetime | None]:
    """?from= (inclusive) and ?to= (exclusive); `to` before `from` is a mistake, not an empty page."""
    start, end = parse_time(request, "from"), parse_time(request, "to")
    if start is not None and end is not None and end < start:
        raise AdminError(422, "to must not be earlier than from", "to")
    return start, end


# -- the app ---------------------------------------------------------------------------------------------------


def _wrap(endpoint: Endpoint, services: Callable[[], AdminServices]) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            check_path(request.path_params)
            check_query(request)
            outcome = await endpoint.handler(request, services(), **request.path_params)
        except AdminError as exc:
            return to_response(exc).render()
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            # Input the checks above let through and the database refused: still the operator's input, so a
            # 4xx; logged, because every such case is a check missing here.
            log.warning("admin %s %s: the database refused the input: %s", request.method, request.url.path, exc)
            status = 409 if isinstance(exc, asyncpg.UniqueViolationError) else 422
            return json_error(status, f"the database refused the input: {exc.__class__.__name__}")
        except Exception as exc:
            # The admin app is mounted outside the proxy's ServerErrors layer: answer in the same JSON shape.
            if unavailable(exc):
                log.warning("admin %s %s: database unavailable: %s", request.method, request.url.path, exc)
                return json_error(503, "database unavailable; retry shortly", retryable=True)
            log.exception("admin %s %s failed", request.method, request.url.path)
            return json_error(500, "internal error")
        if isinstance(outcome, Response):  # an answer that is not JSON (a CSV export)
            return outcome
        status = 200
        if isinstance(outcome, Created):
            outcome, status = outcome.result, outcome.status
        if isinstance(outcome, Page):
            return JSONResponse(
                {"success": True, "result": outcome.items, "result_info": {"next_cursor": outcome.next_cursor}},
                status_code=status,
            )
        return JSONResponse({"success": True, "result": outcome}, status_code=status)

    return handle


PAGE_PARAMETERS: list[dict[str, Any]] = [
    {"name": "limit", "in": "query", "required": False, "description": "page size",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}},
    {"name": "cursor", "in": "query", "required": False,
     "description": "result_info.next_cursor of the previous page, as it was returned (opaque)",
     "schema": {"type": "string", "maxLength": MAX_CURSOR_CHARS}},
]


def openapi(routers: list[AdminRouter], prefix: str = "/admin") -> dict[str, Any]:
    paths: dict[str, Any] = {}
    error = {"$ref": "#/components/schemas/Error"}
    for router in routers:
        for ep in router.endpoints:
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _path_params(ep.path)
            ] + [
                {"name": name, "in": "query", "required": False, "description": desc, "schema": {"type": "string"}}
                for name, desc in ep.query.items()
            ] + (PAGE_PARAMETERS if ep.paginated else [])
            success: dict[str, Any] = {"description": "success: {\"success\": true, \"result\": ...}"}
            if ep.paginated:
                success = {"description": "one page: {\"success\": true, \"result\": [...], \"result_info\": "
                                          "{\"next_cursor\": ...}}; next_cursor is null on the last page",
                           "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Page"}}}}
            op: dict[str, Any] = {
                "tags": [router.tag],
                "summary": ep.summary,
                "operationId": ep.handler.__name__,
                "parameters": params,
                "security": [{"bearer": []}],
                "responses": {
                    "200": success,
                    **{code: {"description": desc, "content": {"application/json": {"schema": error}}}
                       for code, desc in (("401", "missing or wrong admin token"), ("404", "not found"),
                                          ("409", "conflict"),
                                          ("422", "invalid input (body, limit, cursor, ...); error.field names it"))},
                },
            }
            if ep.body is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": ep.body}}}
            paths.setdefault(prefix + ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Spendgate admin API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Page": {
                    "type": "object",
                    "properties": {
                        "success": {"const": True},
                        "result": {"type": "array"},
                        "result_info": {"type": "object", "required": ["next_cursor"],
                                        "properties": {"next_cursor": {"type": ["string", "null"]}}},
                    },
                },
                "Error": {
                    "type": "object",
                    "properties": {
                        "success": {"const": False},
                        "error": {"type": "object", "properties": {"message": {"type": "string"},
                                                                   "field": {"type": "string"}}},
                    },
                }
            },
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]


def create_admin_app(routers: list[AdminRouter], services: Callable[[], AdminServices],
                     authenticate: Callable[[str | None], Awaitable[bool]]) -> ASGIApp:
    """The admin ASGI app. `services()`: what each request's handler is given (called per request: a serving
    process starts its services on the first one). `authenticate(bearer_token)` decides every request except the
    OpenAPI document."""
    spec = openapi(routers)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(spec)

    routes = [Route("/openapi.json", openapi_json, methods=["GET"]), *docs.ROUTES]
    for router in routers:
        for ep in router.endpoints:
            routes.append(Route(ep.path, _wrap(ep, services), methods=[ep.method]))
    inner = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _method_not_allowed})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not docs.is_public(scope):
            token = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scheme, _, credential = value.decode("latin-1").partition(" ")
                    if scheme.lower() == "bearer":
                        token = credential.strip()
            if not await authenticate(token):
                response = json_error(401, "missing or wrong admin token (Authorization: Bearer <token>)",
                                      headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await inner(scope, receive, send)

    return app


async def _not_found(request: Request, exc: Exception) -> Response:
    return json_error(404, f"no admin endpoint at {request.url.path}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return json_error(405, f"{request.method} is not allowed on {request.url.path}")
