"""`GET /admin/docs`: the admin API reference, rendered by Swagger UI from `GET /admin/openapi.json`.

Swagger UI's files come from the `swagger-ui-bundle-v2` package, served by the gateway itself: the page loads
nothing from a CDN, so it works on a machine without internet access, and its Content-Security-Policy allows only
the gateway's own origin. Like the OpenAPI document it describes, the page is public (it holds no data); every
call made from it ("Try it out") needs the admin token, entered with the "Authorize" button.
"""

from __future__ import annotations

import json

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from gateway.errors import json_error

# The files of Swagger UI the page needs, by the name the page asks for.
ASSETS = {"swagger-ui.css": "text/css", "swagger-ui-bundle.js": "text/javascript",
          "favicon-32x32.png": "image/png"}

CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Spendgate admin API</title>
<link rel="icon" type="image/png" href="{base}/docs/favicon-32x32.png">
<link rel="stylesheet" href="{base}/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{base}/docs/swagger-ui-bundle.js"></script>
<script src="{base}/docs/init.js"></script>
</body>
</html>
"""

# Kept out of the page so that the policy can forbid inline scripts.
INIT = """window.ui = SwaggerUIBundle({{
  url: {spec},
  dom_id: "#swagger-ui",
  deepLinking: true,
  layout: "BaseLayout",
  presets: [SwaggerUIBundle.presets.apis],
  persistAuthorization: false
}});
"""

PUBLIC = {"/openapi.json", "/docs", "/docs/init.js", *(f"/docs/{name}" for name in ASSETS)}


def is_public(scope: Scope) -> bool:
    """Requests that need no admin token: the OpenAPI document, this page and its files. Decided on the path
    inside the admin app (after its mount prefix), exactly, so that no account or gateway id can look public."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path in PUBLIC


def _base(request: Request) -> str:
    """Where the admin app is mounted (`/admin`, under any outer prefix), so the page works when mounted."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _headers() -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


async def page(request: Request) -> Response:
    return HTMLResponse(PAGE.format(base=_base(request)), headers=_headers())


async def init_script(request: Request) -> Response:
    spec = json.dumps(_base(request) + "/openapi.json")
    return Response(INIT.format(spec=spec), media_type="text/javascript", headers=_headers())


async def asset(request: Request) -> Response:
    import swagger_ui_bundle  # imported on first use: nothing else needs it

    name = request.path_params["name"]
    if name not in ASSETS:
        return json_error(404, f"no admin endpoint at {request.url.path}")
    headers = {**_headers(), "Cache-Control": "public, max-age=86400"}
    return FileResponse(swagger_ui_bundle.swagger_ui_path / name, media_type=ASSETS[name], headers=headers)


ROUTES = [
    Route("/docs", page, methods=["GET"]),
    Route("/docs/init.js", init_script, methods=["GET"]),
    Route("/docs/{name}", asset, methods=["GET"]),
]
