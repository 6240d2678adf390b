"""The dashboard's ASGI app, mounted at `/dashboard`: a sign-in page, the pages (one HTML shell that the
dashboard's script fills in), their static files, and `/dashboard/api/…`, the admin API reached with the session
cookie instead of the bearer token.

`/dashboard/api/<path>` is the admin API itself (the same routers, validation and answers as `/admin/<path>`),
served by a second instance of the admin app whose authentication is the session. So the pages can show nothing
the admin API would not answer, and compute no figure of their own. Requests that change something need the
session's CSRF token in the `X-Spendgate-CSRF` header and, when the browser sends one, an `Origin` equal to the
gateway's own.

Every page is served with a Content-Security-Policy that allows only the gateway's own origin and no inline
script: the dashboard loads nothing from a CDN and works offline.
"""

from __future__ import annotations

import html
import json
import string
from importlib import resources
from pathlib import PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.admin.api import create_admin_app
from gateway.admin.app import ROUTERS
from gateway.admin.token import AdminTokenCheck
from gateway.dashboard.sessions import COOKIE, CSRF_HEADER, Session, Sessions
from gateway.errors import json_error

if TYPE_CHECKING:
    from gateway.services import Running, Services

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "font-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")

# The files under static/ that are served, by the name the pages ask for, and their media types.
ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "favicon.svg": "image/svg+xml",
    "vendor/chart.umd.min.js": "text/javascript",
    "vendor/chart.js.LICENSE.md": "text/markdown",
}

# Pages: path inside the dashboard -> (the page's name for the script, its title, the nav entry it lights up).
PAGES = {
    "/": ("overview", "Credits", "overview"),
    "/spend": ("spend", "Spend", "spend"),
    "/rules": ("rules", "Spend limits", "rules"),
    "/anomalies": ("anomalies", "Anomalies", "anomalies"),
    "/logs": ("logs", "Request logs", "logs"),
    "/logs/{gateway}/{log_id}": ("log", "Request", "logs"),
}
NAV = [("overview", "/", "Credits"), ("spend", "/spend", "Spend"), ("rules", "/rules", "Spend limits"),
       ("anomalies", "/anomalies", "Anomalies"), ("logs", "/logs", "Request logs")]

MAX_LOGIN_BODY = 4096


def _template(name: str) -> string.Template:
    return string.Template(resources.files("gateway.dashboard").joinpath("templates", name).read_text())


def _headers(*, cache: str = "no-store") -> dict[str, str]:
    return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
            "X-Frame-Options": "DENY", "Cache-Control": cache}


def _base(request: Request) -> str:
    """Where the dashboard is mounted (`/dashboard`, under any outer prefix)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _same_origin(request: Request) -> bool:
    """A browser names the page a POST comes from in `Origin`; it must be this gateway (absent: not a browser
    that sends one, and SameSite=Strict already kept the cookie from any other site)."""
    origin = request.headers.get("origin")
    return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"


def _next_path(raw: str | None, base: str) -> str:
    """Where to go after signing in: a path inside the dashboard only (never another site)."""
    if raw and raw.startswith(base + "/") and not raw.startswith("//") and "\\" not in raw and "\n" not in raw:
        return raw
    return base + "/"


class Dashboard:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._check: AdminTokenCheck | None = None
        self.sessions = Sessions(self._is_admin_token, self._digest)
        self.shell = _template("shell.html")
        self.login = _template("login.html")

    # the admin token check is built on first use: the database exists once the services have started
    def _token_check(self) -> AdminTokenCheck:
        if self._check is None:
            self._check = AdminTokenCheck(self.services.running.db, self.services.settings.admin_token)
        return self._check

    async def _is_admin_token(self, token: str | None) -> bool:
        return await self._token_check()(token)

    async def _digest(self) -> str | None:
        return await self._token_check().digest()

    async def session(self, request: Request) -> Session | None:
        return await self.sessions.verify(request.cookies.get(COOKIE))

    # -- sign-in and sign-out ------------------------------------------------------------------------------------

    def _login_page(self, request: Request, *, message: str = "", status: int = 200, next_path: str = "") -> Response:
        base = _base(request)
        notice = {"expired": "Your session has ended. Sign in again to continue.",
                  "signed-out": "You are signed out."}.get(request.query_params.get("reason", ""), "")
        body = self.login.substitute(
            base=html.escape(base), error=html.escape(message), error_hidden="" if message else "hidden",
            notice=html.escape(notice), notice_hidden="" if notice and not message else "hidden",
            next=html.escape(next_path or request.query_params.get("next", "")))
        return Response(body, status, media_type="text/html", headers=_headers())

    async def login_form(self, request: Request) -> Response:
        if await self.session(request) is not None:
            return RedirectResponse(_next_path(request.query_params.get("next"), _base(request)), 303)
        return self._login_page(request)

    async def login_submit(self, request: Request) -> Response:
        if not _same_origin(request):
            return self._login_page(request, message="This sign-in did not come from this gateway's page.",
                                    status=403)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_LOGIN_BODY:
                return self._login_page(request, message="The form was too large.", status=413)
        form = parse_qs(body.decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0].strip()
        next_path = (form.get("next") or [""])[0]
        issued = await self.sessions.sign_in(token)
        if issued is None:
            message = ("Enter the admin token." if not token else
                       "That is not this gateway's admin token. It is the value of SPENDGATE_ADMIN_TOKEN, or the "
                       "token printed when the gateway first started.")
            return self._login_page(request, message=message, status=401, next_path=next_path)
        value, session = issued
        response = RedirectResponse(_next_path(next_path, _base(request)), 303, headers=_headers())
        response.set_cookie(COOKIE, value, max_age=session.expires_at - int(self.sessions.clock()),
                            path=_base(request) or "/", secure=request.url.scheme == "https", httponly=True,
                            samesite="strict")
        return response

    async def logout(self, request: Request) -> Response:
        session = await self.session(request)
        base = _base(request)
        if session is not None:
            body = (await request.body())[:MAX_LOGIN_BODY].decode("utf-8", "replace")
            csrf = (parse_qs(body).get("csrf") or [""])[0]
            if not _same_origin(request) or not self.sessions.csrf_ok(session, csrf):
                return json_error(403, "sign-out must come from the dashboard's own page")
        response = RedirectResponse(f"{base}/login?reason=signed-out", 303, headers=_headers())
        response.delete_cookie(COOKIE, path=base or "/", secure=request.url.scheme == "https", httponly=True,
                               samesite="strict")
        return response

    # -- pages ---------------------------------------------------------------------------------------------------

    def _page(self, route: str) -> Route:
        name, title, active = PAGES[route]

        async def page(request: Request) -> Response:
            session = await self.session(request)
            base = _base(request)
            if session is None:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                reason = "&reason=expired" if COOKIE in request.cookies else ""
                return RedirectResponse(f"{base}/login?next={quote(target, safe='')}{reason}", 303,
                                        headers=_headers())
            nav = "".join(
                f'<a href="{html.escape(base + href)}"{" aria-current=page" if key == active else ""}>'
                f"{html.escape(label)}</a>" for key, href, label in NAV)
            params = {k: str(v) for k, v in request.path_params.items()}
            body = self.shell.substitute(
                base=html.escape(base), title=html.escape(title), page=html.escape(name), nav=nav,
                csrf=html.escape(session.csrf), expires=str(session.expires_at),
                params=html.escape(json.dumps(params)))
            return Response(body, media_type="text/html", headers=_headers())

        return Route(route, page, methods=["GET"])

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return json_error(404, f"no dashboard file at {request.url.path}")
        data = resources.files("gateway.dashboard").joinpath("static", *PurePosixPath(name).parts).read_bytes()
        # the vendored library changes only with a new release of the gateway; our own files may change any time
        cache = "public, max-age=86400" if name.startswith("vendor/") else "no-cache"
        return Response(data, media_type=ASSETS[name], headers=_headers(cache=cache))

    # -- the admin API behind the session -------------------------------------------------------------------------

    def api(self) -> ASGIApp:
        def running() -> Running:
            return self.services.running

        async def authenticate(value: str | None) -> bool:
            return await self.sessions.verify(value) is not None

        admin = create_admin_app(ROUTERS, running, authenticate)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            request = Request(scope)
            session = await self.session(request)
            if session is None:
                await json_error(401, "not signed in to the dashboard, or the session has ended")(scope, receive, send)
                return
            if scope["method"] not in ("GET", "HEAD") and (
                    not _same_origin(request) or not self.sessions.csrf_ok(session, request.headers.get(CSRF_HEADER))):
                await json_error(403, "missing or wrong CSRF token")(scope, receive, send)
                return
            # the session stands in for the bearer token; a bearer sent by the browser is never used
            headers = [(k, v) for k, v in scope["headers"] if k not in (b"authorization", b"cookie")]
            headers.append((b"authorization", b"Bearer " + request.cookies[COOKIE].encode()))

            async def send_uncached(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []), (b"cache-control", b"no-store")]
                await send(message)

            await admin({**scope, "headers": headers}, receive, send_uncached)

        return app

    def app(self) -> ASGIApp:
        routes = [
            Route("/login", self.login_form, methods=["GET"]),
            Route("/login", self.login_submit, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/static/{name:path}", self.asset, methods=["GET"]),
            Mount("/api", app=self.api()),
            *(self._page(route) for route in PAGES),
        ]
        return Starlette(routes=routes, exception_handlers={404: _not_found, 405: _method_not_allowed})


async def _not_found(request: Request, exc: Exception) -> Response:
    return json_error(404, f"no dashboard page at {request.url.path}")


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    return json_error(405, f"{request.method} is not allowed on {request.url.path}")


def dashboard_app(services: Services) -> ASGIApp:
    """The dashboard, for `Mount("/dashboard", app=dashboard_app(services))`."""
    return Dashboard(services).app()
