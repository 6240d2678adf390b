"""The dashboard's door, without a browser: signing in exchanges the admin token for a signed session cookie
(HttpOnly, SameSite=Strict, expiring), the pages and `/dashboard/api` need it, writes need the CSRF token and the
gateway's own Origin, signing out ends it in that browser, and replacing the admin token ends every session."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.dashboard.app import ASSETS, CSP
from gateway.dashboard.sessions import COOKIE, Sessions
from gateway.db import Database
from gateway.settings import Settings

ADMIN_TOKEN = "dashboard-test-admin-token"
ORIGIN = "http://gw"


@pytest.fixture(scope="module")
async def app(db: Database) -> AsyncIterator[Any]:
    gateway = create_app(Settings(database_url=db.url, admin_token=ADMIN_TOKEN), db=db, background=False)
    async with gateway.router.lifespan_context(gateway):
        yield gateway


@pytest.fixture
async def browser(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A client that keeps cookies, as a browser does (no admin token of its own)."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as client:
        yield client


async def sign_in(client: httpx.AsyncClient, token: str = ADMIN_TOKEN, **form: str) -> httpx.Response:
    return await client.post("/dashboard/login", data={"token": token, **form}, headers={"origin": ORIGIN})


def csrf_of(page: httpx.Response) -> str:
    match = re.search(r'<meta name="spendgate-csrf" content="([^"]+)">', page.text)
    assert match, page.text[:500]
    return match[1]


async def test_pages_send_a_stranger_to_the_sign_in_page(browser: httpx.AsyncClient) -> None:
    for path in ("/dashboard/", "/dashboard/spend", "/dashboard/rules", "/dashboard/anomalies", "/dashboard/logs",
                 "/dashboard/logs/g/7b0f5a52-5b52-4c38-9d40-2d2d5b9e8f00"):
        answer = await browser.get(path)
        assert answer.status_code == 303, (path, answer.status_code)
        assert answer.headers["location"].startswith("/dashboard/login?next="), answer.headers["location"]
    login = await browser.get("/dashboard/login")
    assert login.status_code == 200 and 'name="token"' in login.text
    assert login.headers["content-security-policy"] == CSP
    assert (await browser.get("/dashboard/api/accounts")).status_code == 401


async def test_signing_in_sets_a_strict_http_only_cookie_that_opens_the_pages(browser: httpx.AsyncClient) -> None:
    answer = await sign_in(browser, next="/dashboard/rules?account=x")
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard/rules?account=x"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(COOKIE + "=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    assert "Max-Age=43200" in cookie
    assert ADMIN_TOKEN not in cookie  # the token itself never travels back
    page = await browser.get("/dashboard/rules")
    assert page.status_code == 200 and "<title>Spend limits · Spendgate</title>" in page.text
    assert page.headers["content-security-policy"] == CSP and page.headers["cache-control"] == "no-store"
    accounts = await browser.get("/dashboard/api/accounts")
    assert accounts.status_code == 200 and accounts.json()["success"] is True
    assert accounts.headers["cache-control"] == "no-store"


async def test_a_wrong_token_is_refused_and_says_what_the_token_is(browser: httpx.AsyncClient) -> None:
    answer = await sign_in(browser, "not-the-token")
    assert answer.status_code == 401 and "set-cookie" not in answer.headers
    assert "not this gateway&#x27;s admin token" in answer.text
    empty = await sign_in(browser, "")
    assert empty.status_code == 401 and "Enter the admin token" in empty.text


async def test_sign_in_from_another_site_is_refused(browser: httpx.AsyncClient) -> None:
    answer = await browser.post("/dashboard/login", data={"token": ADMIN_TOKEN},
                                headers={"origin": "https://evil.example"})
    assert answer.status_code == 403 and "set-cookie" not in answer.headers


async def test_after_sign_in_the_dashboard_never_redirects_to_another_site(browser: httpx.AsyncClient) -> None:
    for target in ("https://evil.example/", "//evil.example/dashboard/", "/elsewhere", "/dashboard/\\evil"):
        answer = await sign_in(browser, next=target)
        assert answer.headers["location"] == "/dashboard/", (target, answer.headers["location"])


async def test_writes_need_the_csrf_token_and_the_gateways_own_origin(browser: httpx.AsyncClient,
                                                                     app: Any) -> None:
    await sign_in(browser)
    csrf = csrf_of(await browser.get("/dashboard/"))
    name = f"dash-{uuid.uuid4().hex[:10]}"
    body = {"id": name}
    assert (await browser.post("/dashboard/api/accounts", json=body)).status_code == 403
    wrong = await browser.post("/dashboard/api/accounts", json=body, headers={"x-spendgate-csrf": "x" * 43})
    assert wrong.status_code == 403
    other_site = await browser.post("/dashboard/api/accounts", json=body,
                                    headers={"x-spendgate-csrf": csrf, "origin": "https://evil.example"})
    assert other_site.status_code == 403
    made = await browser.post("/dashboard/api/accounts", json=body,
                              headers={"x-spendgate-csrf": csrf, "origin": ORIGIN})
    assert made.status_code == 201, made.text
    assert (await browser.get(f"/dashboard/api/accounts/{name}")).json()["result"]["id"] == name


async def test_the_api_behind_the_session_is_the_admin_api(browser: httpx.AsyncClient, app: Any) -> None:
    await sign_in(browser)
    through_dashboard = await browser.get("/dashboard/api/accounts/nobody-here/credits")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as admin:
        direct = await admin.get("/admin/accounts/nobody-here/credits",
                                 headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert through_dashboard.status_code == direct.status_code == 404
    assert through_dashboard.json() == direct.json()


async def test_the_admin_token_is_not_a_dashboard_session(app: Any) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as client:
        answer = await client.get("/dashboard/api/accounts", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert answer.status_code == 401
        client.cookies.set(COOKIE, "9999999999.AAAAAAAAAAAAAAAAAAAAAA." + "A" * 43)
        assert (await client.get("/dashboard/api/accounts")).status_code == 401  # well formed, not signed


async def test_signing_out_ends_the_session_in_this_browser(browser: httpx.AsyncClient) -> None:
    await sign_in(browser)
    csrf = csrf_of(await browser.get("/dashboard/"))
    refused = await browser.post("/dashboard/logout", data={"csrf": "wrong"}, headers={"origin": ORIGIN})
    assert refused.status_code == 403
    out = await browser.post("/dashboard/logout", data={"csrf": csrf}, headers={"origin": ORIGIN})
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login?reason=signed-out"
    assert f'{COOKIE}=""' in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]
    assert (await browser.get("/dashboard/api/accounts")).status_code == 401
    assert (await browser.get("/dashboard/")).status_code == 303


async def test_the_static_files_are_served_from_the_package_with_the_policy(browser: httpx.AsyncClient) -> None:
    for name, media_type in ASSETS.items():
        answer = await browser.get(f"/dashboard/static/{name}")
        assert answer.status_code == 200, name
        assert answer.headers["content-type"].startswith(media_type)
        assert answer.headers["content-security-policy"] == CSP
    chart = (await browser.get("/dashboard/static/vendor/chart.umd.min.js")).text
    assert chart.startswith("/*!\n * Chart.js v4.6.1")
    assert (await browser.get("/dashboard/static/../app.py")).status_code == 404
    assert (await browser.get("/dashboard/static/nothing.js")).status_code == 404


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_sessions_expire_are_bound_to_the_token_and_cannot_be_altered() -> None:
    tokens = {"current": "a" * 64}

    async def check(token: str | None) -> bool:
        return token == "the-token"

    async def digest() -> str | None:
        return tokens["current"]

    clock = Clock(1_000_000.0)
    sessions = Sessions(check, digest, lifetime=3600, clock=clock)
    assert await sessions.sign_in("wrong") is None
    issued = await sessions.sign_in("the-token")
    assert issued is not None
    value, session = issued
    assert session.expires_at == 1_000_000 + 3600
    again = await sessions.verify(value)
    assert again is not None and again.csrf == session.csrf and Sessions.csrf_ok(again, session.csrf)
    assert not Sessions.csrf_ok(again, None) and not Sessions.csrf_ok(again, session.csrf[:-1] + "x")

    expires, nonce, signature = value.split(".")
    assert await sessions.verify(f"{int(expires) + 3600}.{nonce}.{signature}") is None  # a longer life, forged
    assert await sessions.verify(f"{expires}.{nonce}.{signature[::-1]}") is None
    assert await sessions.verify(value + "x") is None and await sessions.verify("") is None

    clock.now += 3599
    assert await sessions.verify(value) is not None
    clock.now += 1
    assert await sessions.verify(value) is None  # expired

    clock.now = 1_000_000.0
    tokens["current"] = "b" * 64  # the admin token was replaced
    assert await sessions.verify(value) is None
