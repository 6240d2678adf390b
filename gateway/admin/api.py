"""A small declarative router for the admin API: each capability module declares its endpoints on an
`AdminRouter`; `create_admin_app` mounts them behind the bearer token, wraps results in the response shape of
SPEC §9, turns `AdminError` (and the domain errors) into JSON errors, and serves `GET /admin/openapi.json`
generated from the same declarations, so the document cannot drift from the routes.

Shapes: success `{"success": true, "result": ...}` (lists add `result_info.next_cursor`); error
`{"success": false, "error": {"message": ..., "field": ...}}` with 401 / 404 / 409 / 422.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.errors import json_error
from gateway.money import InvalidAmount, parse_usd, to_nano

log = logging.getLogger("spendgate.admin")


class AdminError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


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
            q = dict(query or {})
            if paginated:
                q.update(cursor="opaque cursor from result_info.next_cursor", limit="page size (1-500, default 100)")
            self.endpoints.append(Endpoint(method, path, summary, handler, body, q, paginated))
            return handler

        return register


# -- request helpers -------------------------------------------------------------------------------------------


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > 1_000_000:
        raise AdminError(413, "request body too large")
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise AdminError(422, "body must be a JSON object") from None
    if not isinstance(data, dict):
        raise AdminError(422, "body must be a JSON object")
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


def page_params(request: Request) -> tuple[Any, int]:
    """(decoded cursor or None, limit) from ?cursor=&limit=."""
    raw_limit = request.query_params.get("limit", "100")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise AdminError(422, "limit must be an integer", "limit") from None
    if not 1 <= limit <= 500:
        raise AdminError(422, "limit must be between 1 and 500", "limit")
    cursor = request.query_params.get("cursor")
    if not cursor:
        return None, limit
    try:
        return json.loads(base64.urlsafe_b64decode(cursor.encode())), limit
    except ValueError:
        raise AdminError(422, "invalid cursor", "cursor") from None


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, default=str).encode()).decode()


# -- the app ---------------------------------------------------------------------------------------------------


def _wrap(endpoint: Endpoint, context: Any) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        try:
            outcome = await endpoint.handler(request, context, **request.path_params)
        except AdminError as exc:
            return json_error(exc.status, exc.message, field=exc.field)
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
            ]
            op: dict[str, Any] = {
                "tags": [router.tag],
                "summary": ep.summary,
                "operationId": ep.handler.__name__,
                "parameters": params,
                "security": [{"bearer": []}],
                "responses": {
                    "200": {"description": "success: {\"success\": true, \"result\": ...}"},
                    **{code: {"description": desc, "content": {"application/json": {"schema": error}}}
                       for code, desc in (("401", "missing or wrong admin token"), ("404", "not found"),
                                          ("409", "conflict"), ("422", "invalid body; error.field names it"))},
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


def create_admin_app(routers: list[AdminRouter], context: Any,
                     authenticate: Callable[[str | None], Awaitable[bool]]) -> Starlette:
    """The admin ASGI app. `authenticate(bearer_token)` decides every request except the OpenAPI document."""
    spec = openapi(routers)

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(spec)

    routes = [Route("/openapi.json", openapi_json, methods=["GET"])]
    for router in routers:
        for ep in router.endpoints:
            routes.append(Route(ep.path, _wrap(ep, context), methods=[ep.method]))
    inner = Starlette(routes=routes, exception_handlers={404: _not_found, 405: _method_not_allowed})

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].rstrip("/").split("/")[-1] != "openapi.json":
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

    return app  # type: ignore[return-value]


async def _not_found(request: Request, exc: Exception) -> Response:
    return json_error(404, f"no admin endpoint at {request.url.path}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return json_error(405, f"{request.method} is not allowed on {request.url.path}")
