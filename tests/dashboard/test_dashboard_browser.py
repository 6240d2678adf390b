"""The dashboard in a real browser (Debian's chromium through Playwright) against a gateway with real traffic
(tests/dashboard/conftest.py): sign in, every page, the figures shown equal the admin API's, filters, one request
opened, sign out. Screenshots of every page are saved under test-artifacts/dashboard/ (not committed)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.dashboard.conftest import ADMIN, Seeded

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)"),
]
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"


def usd_text(value: str | None) -> str:
    """How the dashboard shows an amount: 2 decimals from $1, up to 4 below (trailing zeros past the second
    dropped), "< $0.0001" for less, "—" when unknown. Rounded half up."""
    if value is None:
        return "—"
    amount = Decimal(value)
    if amount == 0:
        return "$0.00"
    sign = "-" if amount < 0 else ""
    size = abs(amount)
    if size >= 1:
        return f"{sign}${size.quantize(Decimal('0.01'), ROUND_HALF_UP):,.2f}"
    rounded = size.quantize(Decimal("0.0001"), ROUND_HALF_UP)
    if rounded == 0:
        return f"{sign}< $0.0001"
    whole, fraction = f"{rounded:.4f}".split(".")
    return f"{sign}${int(whole):,}.{fraction.rstrip('0').ljust(2, '0')}"


def cost_text(row: dict[str, Any]) -> str:
    """A logged request's cost: a refused or failed one without a cost was not charged."""
    return "not charged" if row["cost_usd"] is None and not row["success"] else usd_text(row["cost_usd"])


def tokens_text(value: int) -> str:
    return f"{value:,}"


class Browser:
    """One signed-in browser for the module, and what it saw: every URL it requested, every console error."""

    def __init__(self, seeded: Seeded, context: Any) -> None:
        self.seeded = seeded
        self.context = context
        self.requested: list[str] = []
        self.errors: list[str] = []
        self.api_calls: list[str] = []

    async def open(self, path: str, shot: str | None = None) -> Any:
        page = await self.context.new_page()
        page.on("request", lambda request: self.requested.append(request.url))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("response", lambda r: self.api_calls.append(r.url) if "/dashboard/api/" in r.url else None)
        await page.goto(self.seeded.url + path)
        await page.wait_for_selector("body[data-ready]", timeout=20_000)
        if shot:
            await self.shoot(page, shot)
        return page

    async def shoot(self, page: Any, name: str) -> None:
        await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def last_call(self, fragment: str) -> tuple[str, dict[str, str]]:
        """The path and query of the newest API call whose path ends with `fragment`, as the admin API path."""
        url = next(u for u in reversed(self.api_calls) if urlsplit(u).path.endswith(fragment))
        parts = urlsplit(url)
        return parts.path.removeprefix("/dashboard/api"), dict(parse_qsl(parts.query))


@pytest.fixture(scope="module")
async def browser(seeded: Seeded) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = await chromium.new_context(viewport={"width": 1360, "height": 900}, timezone_id="America/New_York")
        try:
            yield Browser(seeded, context)
        finally:
            await context.close()
            await chromium.close()


async def texts(page: Any, selector: str) -> list[str]:
    return [text.strip() for text in await page.locator(selector).all_inner_texts()]


async def test_sign_in(browser: Browser) -> None:
    page = await browser.context.new_page()
    await page.goto(browser.seeded.url + "/dashboard/spend")
    assert "/dashboard/login" in page.url
    await page.fill("#token", "not-the-token")
    await page.click("button[type=submit]")
    assert "not this gateway's admin token" in await page.inner_text("[data-testid=login-error]")
    await browser.shoot(page, "01-sign-in-refused")
    await page.fill("#token", ADMIN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("body[data-ready]")
    assert page.url.startswith(browser.seeded.url + "/dashboard/spend")  # back where it was going
    [cookie] = [c for c in await browser.context.cookies() if c["name"] == "spendgate_dashboard"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert ADMIN not in cookie["value"]
    assert await page.evaluate("document.cookie") == ""  # invisible to scripts
    await page.close()


async def test_money_is_shown_as_the_tests_expect(browser: Browser) -> None:
    page = await browser.open("/dashboard/")
    cases = ["0", "0.00", "1", "12.5", "1234567.891", "0.5", "0.0123", "0.00004", "0.00005", "0.99996", "-3.456",
             "-0.0042", "0.000000001", "9223372036.854775807", "2.005", "0.12345"]
    shown = await page.evaluate("cases => cases.map(window.spendgateDashboard.usdText)", cases)
    assert shown == [usd_text(c) for c in cases]
    await page.close()


async def test_credits_page_shows_the_ledger_and_tops_up(browser: Browser) -> None:
    s = browser.seeded
    # a forecast's rate moves with the clock (a trend up to now): it is read before and after the page, which
    # shows the rate of a moment in between
    earlier = s.get(f"/accounts/{s.account}/credits")["result"]
    page = await browser.open(f"/dashboard/?account={s.account}", "02-credits")
    credits = s.get(f"/accounts/{s.account}/credits")["result"]
    for name in ("balance", "pending", "available"):
        element = page.locator(f"[data-testid=credits-{name}]")
        assert await element.inner_text() == usd_text(credits[f"{name}_usd"])
        assert await element.get_attribute("data-usd") == credits[f"{name}_usd"]
    assert Decimal(credits["balance_usd"]) < Decimal(20)  # unified-billing usage was debited
    auto = credits["auto_topup"]
    assert await page.inner_text("[data-testid=auto-topup-threshold]") == usd_text(auto["threshold_usd"])
    assert await page.inner_text("[data-testid=auto-topup-amount]") == usd_text(auto["amount_usd"])
    forecast = await page.inner_text("[data-testid=forecast]")
    if credits.get("forecast"):
        assert any(usd_text(c["forecast"]["rate_usd_per_day"]) in forecast for c in (earlier, credits)
                   if c.get("forecast")), forecast
    else:
        assert "not available" in forecast
    statement = s.get(f"/accounts/{s.account}/credits/statement", limit=10)["result"]
    shown = await texts(page, "[data-testid=statement] tbody td.num")
    assert sorted(shown) == sorted(usd_text(r["amount_usd"]) for r in statement)

    await page.fill("[data-testid=topup-amount]", "12.50")
    await page.click("[data-testid=topup-submit]")
    assert "$12.50" in await page.inner_text(".confirm")
    await browser.shoot(page, "03-credits-top-up-confirm")
    await page.click("[data-testid=topup-confirm]")
    await page.wait_for_selector(".form-message.ok")
    after = s.get(f"/accounts/{s.account}/credits")["result"]
    assert Decimal(after["balance_usd"]) == Decimal(credits["balance_usd"]) + Decimal("12.50")
    await page.wait_for_function(
        "v => document.querySelector('[data-testid=credits-balance]').dataset.usd === v", arg=after["balance_usd"])
    assert await page.inner_text("[data-testid=credits-balance]") == usd_text(after["balance_usd"])
    await browser.shoot(page, "04-credits-topped-up")
    await page.close()

    # the account spending limit's card, with its forecast
    with s.admin() as admin:
        put = admin.put(f"/accounts/{s.account}/billing/spending-limit",
                        json={"amount_usd": "1000", "duration": "weekly", "strategy": "fixed"})
        assert put.status_code == 200, put.text
    try:
        earlier = s.get(f"/accounts/{s.account}/billing/spending-limit")["result"]
        page = await browser.open(f"/dashboard/?account={s.account}")
        shown = await page.inner_text("[data-testid=limit-forecast]")
        limit = s.get(f"/accounts/{s.account}/billing/spending-limit")["result"]
        assert any(usd_text(x["forecast"]["rate_usd_per_day"]) in shown for x in (earlier, limit)), shown
        assert ("the limit is reached" in shown) == (limit["forecast"]["exhausted_at"] is not None)
        await browser.shoot(page, "04b-credits-spending-limit")
        await page.close()
    finally:
        with s.admin() as admin:
            admin.delete(f"/accounts/{s.account}/billing/spending-limit")


async def test_spend_page_shows_the_analytics_and_filters(browser: Browser) -> None:
    s = browser.seeded
    page = await browser.open(f"/dashboard/spend?account={s.account}", "05-spend-by-model")
    with s.admin() as admin:
        paths = admin.get("/openapi.json").json()["paths"]
    if "/admin/accounts/{account}/analytics" not in paths:
        assert "not available" in await page.inner_text("[data-testid=empty]")
        return
    path, query = browser.last_call("/analytics")
    data = s.get(path, **query)["result"]
    assert data["totals"]["requests"] == sum(s.gateways.values())
    assert await page.inner_text("[data-testid=total-cost]") == usd_text(data["totals"]["cost_usd"])
    assert await page.inner_text("[data-testid=total-requests]") == tokens_text(data["totals"]["requests"])
    assert await page.inner_text("[data-testid=total-tokens-out]") == tokens_text(data["totals"]["tokens_out"])
    assert await texts(page, "[data-testid=group-cost]") == [usd_text(g["cost_usd"]) for g in data["groups"]]
    datasets = await page.evaluate(
        "Chart.getChart(document.querySelector('[data-testid=spend-chart]')).data.datasets.length")
    assert datasets == len(data["groups"])

    # stacked by user, on gateway g only
    await page.select_option("[data-testid=group-by]", "cf.user_id")
    await page.select_option("[data-testid=filter-gateway]", "g")
    async with page.expect_navigation():
        await page.click("[data-testid=apply]")
    await page.wait_for_selector("body[data-ready]")
    await browser.shoot(page, "06-spend-by-user-gateway-g")
    path, query = browser.last_call("/analytics")
    assert query["group_by"] == "cf.user_id" and query["gateway"] == "g"
    data = s.get(path, **query)["result"]
    assert data["totals"]["requests"] == s.gateways["g"]
    assert await page.inner_text("[data-testid=total-cost]") == usd_text(data["totals"]["cost_usd"])
    assert await texts(page, "[data-testid=group-cost]") == [usd_text(g["cost_usd"]) for g in data["groups"]]

    # a person's requests, from their row
    [bob] = [g for g in data["groups"] if g["key"] == {"cf.user_id": "bob"}]
    async with page.expect_navigation():
        await page.click("[data-testid=spend-groups] tr[data-key='{\"cf.user_id\":\"bob\"}'] a")
    await page.wait_for_selector("body[data-ready]")
    assert "/dashboard/logs" in page.url and "user_id=bob" in page.url
    assert await page.locator("[data-testid=log-row]").count() == bob["requests"] == 2
    await page.close()

    # narrowed to one model and one metadata value: every figure is the API's with the same filters, which are the
    # logs API's and cover the same rows
    page = await browser.open(f"/dashboard/spend?account={s.account}&gateway=g&group_by=cf.user_id", None)
    await page.fill("[data-testid=filter-model]", "gpt-4o-mini")
    await page.fill("[data-testid=filter-meta-key]", "team")
    await page.fill("[data-testid=filter-meta-value]", "search")
    async with page.expect_navigation():
        await page.click("[data-testid=apply]")
    await page.wait_for_selector("body[data-ready]")
    await browser.shoot(page, "06b-spend-filtered")
    path, query = browser.last_call("/analytics")
    assert (query["model"], query["metadata.team"], query["gateway"]) == ("gpt-4o-mini", "search", "g")
    data = s.get(path, **query)["result"]
    rows = s.get(f"/accounts/{s.account}/gateways/g/logs", model="gpt-4o-mini", limit=100,
                 **{"metadata.team": "search"})["result"]
    assert data["totals"]["requests"] == len(rows) > 0
    assert sum(Decimal(r["cost_usd"] or 0) for r in rows) == Decimal(data["totals"]["cost_usd"])
    assert await page.inner_text("[data-testid=total-cost]") == usd_text(data["totals"]["cost_usd"])
    assert await texts(page, "[data-testid=group-cost]") == [usd_text(g["cost_usd"]) for g in data["groups"]]
    await page.close()


async def test_rules_page_shows_every_bucket(browser: Browser) -> None:
    s = browser.seeded
    page = await browser.open(f"/dashboard/rules?account={s.account}", "07-spend-limits")
    shown_rules = page.locator("[data-testid=rule]")
    rules = [(g, r) for g in sorted({*s.gateways, "default"})
             for r in s.get(f"/accounts/{s.account}/gateways/{g}/spend-limits")["result"]]
    assert await shown_rules.count() == len(rules) == 3
    for gateway, rule in rules:
        card = page.locator(f"[data-rule-id='{rule['id']}']")
        assert rule["name"] in await card.inner_text()
        assert await card.locator("[data-testid=rule-budget]").inner_text() == usd_text(rule["budget_usd"])
        assert rule["buckets"], rule
        for name in ("spent", "pending", "remaining"):
            assert await texts(card, f"[data-testid=bucket-{name}]") == [
                usd_text(b[f"{name}_usd"]) for b in rule["buckets"]], (gateway, rule["name"], name)
    per_user = next(r for _, r in rules if r["name"] == "per-user-daily")
    # the CI job has no user id: its requests share the bucket of "no user"
    assert {b["key"]["cf.user_id"] for b in per_user["buckets"]} == {"alice", "bob", "carol", None}
    await page.close()


async def test_anomalies_page(browser: Browser) -> None:
    s = browser.seeded
    page = await browser.open(f"/dashboard/anomalies?account={s.account}", "08-anomalies")
    with s.admin() as admin:
        paths = admin.get("/openapi.json").json()["paths"]
    if "/admin/accounts/{account}/analytics/anomalies" not in paths:
        assert "not available" in await page.inner_text("[data-testid=empty]")
        return
    path, query = browser.last_call("/analytics/anomalies")
    result = s.get(path, **query)["result"]
    rows = result if isinstance(result, list) else result.get("anomalies", [])
    if rows:
        assert await texts(page, "[data-testid=anomaly-cost]") == [usd_text(a["cost_usd"]) for a in rows]
    else:  # a day of traffic has no 30-day history to be unusual against
        assert "No unusual spend" in await page.inner_text("[data-testid=empty]")
    await page.close()


async def test_log_explorer_filters_and_opens_one_request(browser: Browser) -> None:
    s = browser.seeded
    page = await browser.open(f"/dashboard/logs?account={s.account}&gateway=g", "09-logs")
    logs = s.get(f"/accounts/{s.account}/gateways/g/logs", limit=50)["result"]
    assert await page.locator("[data-testid=log-row]").count() == len(logs) == s.gateways["g"]
    assert [await r.get_attribute("data-log-id") for r in await page.locator("[data-testid=log-row]").all()] == [
        row["id"] for row in logs]
    assert await texts(page, "[data-testid=log-cost]") == [cost_text(row) for row in logs]
    assert "429" in await page.inner_text("[data-testid=logs]")

    # only bob's requests, by identity
    await page.fill("[data-testid=filter-user_id]", "bob")
    async with page.expect_navigation():
        await page.click("[data-testid=apply]")
    await page.wait_for_selector("body[data-ready]")
    bobs = s.get(f"/accounts/{s.account}/gateways/g/logs", user_id="bob", limit=50)["result"]
    assert len(bobs) == 2
    assert [await r.get_attribute("data-log-id") for r in await page.locator("[data-testid=log-row]").all()] == [
        row["id"] for row in bobs]
    await browser.shoot(page, "10-logs-filtered-bob")

    # by metadata, on the other gateway
    await page.fill("[data-testid=filter-user_id]", "")
    await page.select_option("[data-testid=filter-gateway]", "research")
    await page.fill("[data-testid=filter-meta-key]", "team")
    await page.fill("[data-testid=filter-meta-value]", "research")
    async with page.expect_navigation():
        await page.click("[data-testid=apply]")
    await page.wait_for_selector("body[data-ready]")
    [research] = s.get(f"/accounts/{s.account}/gateways/research/logs", **{"metadata.team": "research"})["result"]
    assert [await r.get_attribute("data-log-id") for r in await page.locator("[data-testid=log-row]").all()] == [
        research["id"]]

    # one request
    async with page.expect_navigation():
        await page.click("[data-testid=log-link]")
    await page.wait_for_selector("body[data-ready]")
    await browser.shoot(page, "11-one-request")
    one = s.get(f"/accounts/{s.account}/gateways/research/logs/{research['id']}")["result"]
    assert await page.inner_text("[data-testid=detail-cost]") == usd_text(one["cost_usd"]) == "$0.30"
    assert await page.inner_text("[data-testid=detail-tokens-out]") == tokens_text(one["tokens_out"])
    assert await page.inner_text("[data-testid=detail-tokens-in]") == tokens_text(one["tokens_in"])
    assert await page.inner_text("[data-testid=detail-user]") == one["identity"]["user_id"] == "alice"
    assert (await page.inner_text("[data-testid=detail-step]")).startswith(str(one["step"]))
    assert await page.inner_text("[data-testid=detail-zdr]") == ("yes" if one["zdr_applied"] else "no")
    metadata = await page.inner_text("[data-testid=detail-metadata]")
    assert "team" in metadata and "research" in metadata
    assert "BYOK" in await page.inner_text("[data-testid=detail-cost-facts]")

    # a unified-billing request that a spend limit refused
    refused = next(row for row in logs if row["status_code"] == 429)
    page2 = await browser.open(f"/dashboard/logs/g/{refused['id']}?account={s.account}", "12-one-refused-request")
    assert await page2.inner_text("[data-testid=detail-status]") == "429"
    assert await page2.inner_text("[data-testid=detail-cost]") == "not charged"
    assert "Spending limit exceeded" in await page2.inner_text("main")
    await page2.close()
    await page.close()


async def test_log_explorer_shows_the_cache_rate_limits_and_guardrails(browser: Browser) -> None:
    s = browser.seeded
    page = await browser.open(f"/dashboard/logs?account={s.account}&gateway=checks", "15-logs-checks")
    logs = s.get(f"/accounts/{s.account}/gateways/checks/logs")["result"]
    assert [r["cached"] for r in logs] == [False, True, False]  # newest first: refused, hit, miss
    rows = page.locator("[data-testid=log-row]")
    assert [await r.get_attribute("data-log-id") for r in await rows.all()] == [r["id"] for r in logs]
    refused, hit, miss = [await rows.nth(i).inner_text() for i in range(3)]
    assert "rate limited" in refused and "cache hit" not in refused and "pii.email redacted (prompt)" in refused
    assert "cache hit" in hit and "pii.email redacted (prompt)" in hit
    assert "pii.email redacted (prompt)" in miss and "cache hit" not in miss
    assert [r["guardrails"] for r in logs] == [{"prompt": {"pii.email": "redact"}}] * 3  # checked before the limit

    # cache hits only: the API's filter, through the page
    await page.select_option("[data-testid=filter-cached]", "true")
    async with page.expect_navigation():
        await page.click("[data-testid=apply]")
    await page.wait_for_selector("body[data-ready]")
    hits = s.get(f"/accounts/{s.account}/gateways/checks/logs", cached="true")["result"]
    assert [await r.get_attribute("data-log-id") for r in await page.locator("[data-testid=log-row]").all()] == [
        r["id"] for r in hits] == [logs[1]["id"]]

    # one guardrail category, and the detail of the hit
    await page.select_option("[data-testid=filter-cached]", "")
    await page.fill("[data-testid=filter-guardrail]", "pii.email")
    async with page.expect_navigation():
        await page.click("[data-testid=apply]")
    await page.wait_for_selector("body[data-ready]")
    found = s.get(f"/accounts/{s.account}/gateways/checks/logs", guardrail="pii.email")["result"]
    assert [await r.get_attribute("data-log-id") for r in await page.locator("[data-testid=log-row]").all()] == [
        r["id"] for r in found] == [r["id"] for r in logs]
    detail = await browser.open(f"/dashboard/logs/checks/{logs[1]['id']}?account={s.account}", "16-one-cache-hit")
    assert (await detail.inner_text("[data-testid=detail-cache]")).startswith("hit")
    assert await detail.inner_text("[data-testid=detail-guardrails]") == "pii.email redacted in the prompt"
    assert await detail.inner_text("[data-testid=detail-cost]") == usd_text(logs[1]["cost_usd"])
    await detail.close()
    limited = await browser.open(f"/dashboard/logs/checks/{logs[0]['id']}?account={s.account}", "17-rate-limited")
    assert (await limited.inner_text("[data-testid=detail-rate]")).startswith("refused")
    await limited.close()
    await page.close()


async def test_a_missing_request_and_no_accounts_read_as_states_not_errors(browser: Browser) -> None:
    s = browser.seeded
    page = await browser.open(f"/dashboard/logs/g/00000000-0000-4000-8000-000000000000?account={s.account}",
                              "13-request-not-found")
    assert "No such request" in await page.inner_text("[data-testid=empty]")
    await page.close()


async def test_everything_came_from_the_gateway_without_errors(browser: Browser) -> None:
    assert browser.requested
    origin = browser.seeded.url
    assert all(url.startswith(origin) for url in browser.requested), [
        u for u in browser.requested if not u.startswith(origin)]
    # the only console errors allowed: the sign-in refusal (401) and the missing request (404) the tests asked for
    unexpected = [e for e in browser.errors if "status of 401" not in e and "status of 404" not in e]
    assert not unexpected, unexpected


async def test_sign_out(browser: Browser) -> None:
    page = await browser.open(f"/dashboard/?account={browser.seeded.account}")
    async with page.expect_navigation():
        await page.click(".signout button")
    assert "/dashboard/login" in page.url and "You are signed out" in await page.inner_text("main")
    await browser.shoot(page, "14-signed-out")
    answer = await page.request.get(browser.seeded.url + "/dashboard/api/accounts")
    assert answer.status == 401
    await page.goto(browser.seeded.url + "/dashboard/rules")
    assert "/dashboard/login" in page.url
    await page.close()
