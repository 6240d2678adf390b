"""/admin/docs in a real browser (Debian's chromium through Playwright): the reference renders every endpoint of
the OpenAPI document, and the page asks nothing of any other origin."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import httpx
import pytest
import uvicorn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)"),
]


async def test_the_reference_renders_every_endpoint_offline(gateway_app: object, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    server = uvicorn.Server(uvicorn.Config(gateway_app, host="127.0.0.1", port=0, log_level="warning",  # type: ignore[arg-type]
                                           lifespan="off", log_config=None))
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        origin = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as client:
            spec = (await client.get(f"{origin}/admin/openapi.json")).json()
        operations = sum(len(methods) for methods in spec["paths"].values())

        requested: list[str] = []
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = await browser.new_page()
            page.on("request", lambda request: requested.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(f"{origin}/admin/docs")
            await page.wait_for_selector(".opblock", timeout=20_000)
            shown = await page.locator(".opblock").count()
            title = await page.locator(".info .title").inner_text()
            await page.screenshot(path=str(tmp_path / "admin-docs.png"), full_page=False)
            if os.environ.get("SPENDGATE_SCREENSHOTS"):
                shutil.copy(tmp_path / "admin-docs.png", Path(os.environ["SPENDGATE_SCREENSHOTS"]) / "admin-docs.png")
            await browser.close()
        assert not errors, errors
        assert "Spendgate admin API" in title
        assert shown == operations, (shown, operations)
        assert requested and all(url.startswith(origin) for url in requested), requested
    finally:
        server.should_exit = True
        await task
