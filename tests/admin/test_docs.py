"""GET /admin/docs: the admin API reference, served with Swagger UI's files from a package, no CDN, no token."""

from __future__ import annotations

import re

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.admin.conftest import ADMIN_TOKEN


def _client(app: object, base: str = "http://gw/admin") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base)  # type: ignore[arg-type]


async def test_the_page_and_its_files_come_from_the_gateway(gateway_app: object) -> None:
    async with _client(gateway_app) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert sources and all(s.startswith("/admin/docs/") for s in sources), sources  # nothing from elsewhere
        assert "<script>" not in page.text  # no inline script: the policy forbids them
        for source in sources:
            response = await client.get(source.removeprefix("/admin"))
            assert response.status_code == 200, source
        assert (await client.get("/docs/swagger-ui-bundle.js")).headers["content-type"].startswith("text/javascript")
        assert (await client.get("/docs/swagger-ui.css")).headers["content-type"].startswith("text/css")
        init = (await client.get("/docs/init.js")).text
        assert '"/admin/openapi.json"' in init
        assert (await client.get("/openapi.json")).json()["paths"]


async def test_only_those_paths_are_public(gateway_app: object, account: str) -> None:
    async with _client(gateway_app) as anonymous:
        # a file of the package that the page does not use, and ids that merely end like the public paths
        for path in ("/docs/swagger-ui.js", "/docs/../accounts", f"/accounts/{account}/gateways/docs",
                     "/accounts", "/docs/index.html"):
            response = await anonymous.get(path)
            assert response.status_code == 401, (path, response.status_code)
    async with _client(gateway_app) as operator:
        response = await operator.get(f"/accounts/{account}/gateways/docs",
                                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert response.status_code == 404  # reached the API: no such gateway


async def test_the_page_works_under_a_mount_prefix(gateway_app: object) -> None:
    outer = Starlette(routes=[Mount("/ai", app=gateway_app)])  # type: ignore[arg-type]
    async with _client(outer, "http://gw/ai/admin") as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert all(s.startswith("/ai/admin/docs/") for s in sources), sources
        assert '"/ai/admin/openapi.json"' in (await client.get("/docs/init.js")).text
        assert (await client.get("/docs/swagger-ui.css")).status_code == 200
