"""Hostile input to the admin API: every refusal is a 4xx JSON error naming the field, never a 5xx, and nothing
is half done (no account created, no balance changed, no row stored)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.admin.custom_providers import SLUG_RE
from gateway.app import create_app
from gateway.db import Database
from gateway.gateways import valid_id
from gateway.money import BIGINT_MAX, MAX_USD, InvalidAmount, parse_usd, to_nano
from gateway.routes.store import NAME_RE
from gateway.settings import Settings
from harness.pg import fresh_database
from tests.admin.conftest import ADMIN_TOKEN

GRAPH = {"start": "m", "elements": [{"id": "m", "type": "model", "model": "openai/gpt-4o-mini", "success": "e"},
                                    {"id": "e", "type": "end"}]}
RULE = {"name": "daily", "budget_usd": "25", "window": "daily"}


def client_for(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),  # type: ignore[arg-type]
                             base_url="http://gw/admin", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})


@pytest.fixture(scope="module")
async def gateway_app(db: Database) -> AsyncIterator[object]:
    app = create_app(Settings(database_url=db.url, admin_token=ADMIN_TOKEN), db=db, background=False)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def admin(gateway_app: object) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(gateway_app) as client:
        yield client


@pytest.fixture
async def account(admin: httpx.AsyncClient) -> str:
    name = f"adv-{uuid.uuid4().hex[:10]}"
    assert (await admin.post("/accounts", json={"id": name})).status_code == 201
    return name


@pytest.fixture
async def base(admin: httpx.AsyncClient, account: str) -> str:
    """The path of a fresh gateway `gw` of a fresh account."""
    assert (await admin.post(f"/accounts/{account}/gateways", json={"id": "gw"})).status_code == 201
    return f"/accounts/{account}/gateways/gw"


def refused(response: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    """Assert the admin API's error shape; returns the error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and set(body) == {"success", "error"}, body
    error: dict[str, Any] = body["error"]
    assert isinstance(error["message"], str) and error["message"]
    if field is not None:
        assert error.get("field") == field, body
    return error


def cursor_of(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).decode()


async def balance(admin: httpx.AsyncClient, account: str) -> str:
    answer = await admin.get(f"/accounts/{account}/credits")
    assert answer.status_code == 200
    return str(answer.json()["result"]["balance_usd"])


# -- ids -------------------------------------------------------------------------------------------------------


async def test_account_id_with_a_trailing_newline_is_refused_and_not_created(admin: httpx.AsyncClient) -> None:
    name = f"adv-{uuid.uuid4().hex[:8]}"
    refused(await admin.post("/accounts", json={"id": name + "\n"}), 422, "id")
    refused(await admin.get(f"/accounts/{name}"), 404)
    refused(await admin.get(f"/accounts/{name}%0A"), 400)  # a line feed in any path: 400 before routing
    assert name not in [a["id"] for a in (await admin.get("/accounts", params={"limit": 500})).json()["result"]]


async def test_gateway_slug_and_route_names_with_a_trailing_newline_are_refused(
        admin: httpx.AsyncClient, base: str, account: str) -> None:
    refused(await admin.post(f"/accounts/{account}/gateways", json={"id": "second\n"}), 422, "id")
    refused(await admin.post(f"{base}/custom-providers", json={"slug": "vllm\n", "base_url": "http://h"}), 422,
            "slug")
    refused(await admin.post(f"{base}/provider-keys", json={"provider": "custom-vllm\n", "key": "sk-12345678"}),
            422, "provider")
    refused(await admin.post(f"{base}/routes", json={"name": "main\n", "graph": GRAPH}), 422, "name")
    listed = (await admin.get(f"/accounts/{account}/gateways")).json()["result"]
    assert sorted(g["id"] for g in listed) == ["default", "gw"]  # `default` exists from the account's creation
    for listing in ("custom-providers", "provider-keys", "routes"):
        assert (await admin.get(f"{base}/{listing}")).json()["result"] == [], listing


def test_id_patterns_are_anchored_at_the_very_end() -> None:
    assert valid_id("acme") and not valid_id("acme\n") and not valid_id("acme\n\n") and not valid_id("")
    assert SLUG_RE.match("vllm") and not SLUG_RE.match("vllm\n")
    assert NAME_RE.match("main.v2") and not NAME_RE.match("main\n")


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=70))
def test_a_valid_id_is_exactly_the_documented_pattern(text: str) -> None:
    expected = (0 < len(text) <= 63 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789_-" for c in text)
                and text[0] not in "_-")
    assert valid_id(text) == expected
    assert valid_id(text + "\n") is False


async def test_path_ids_that_cannot_exist_are_404_before_any_query(admin: httpx.AsyncClient, base: str) -> None:
    for path in ("/accounts/acme%00", "/accounts/acme%00/credits", f"{base}%00", f"{base}/routes/r%00",
                 f"{base}/routes/r%00/versions", f"{base}/logs/%00", f"{base}/spend-limits/not-a-uuid",
                 "/accounts/" + "a" * 64):
        refused(await admin.get(path), 404)
    for path in (f"{base}/custom-providers/a%00", f"{base}/policies/x%00y", f"{base}/tokens/%00"):
        refused(await admin.delete(path), 404)


# -- amounts ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/credits/topups", {"amount_usd": "10000000000000", "idempotency_key": "k"}, "amount_usd"),
    ("/credits/topups", {"amount_usd": "1e999999999", "idempotency_key": "k"}, "amount_usd"),
    ("/credits/topups", {"amount_usd": "9300000000", "idempotency_key": "k"}, "amount_usd"),
    ("/credits/auto-topup", {"threshold_usd": "1e13", "amount_usd": "1"}, "threshold_usd"),
    ("/credits/auto-topup", {"threshold_usd": "1", "amount_usd": "1e13"}, "amount_usd"),
    ("/billing/spending-limit", {"amount_usd": "1e13", "duration": "daily"}, "amount_usd"),
])
async def test_account_amounts_past_the_maximum_are_422(admin: httpx.AsyncClient, account: str, path: str,
                                                        body: dict[str, Any], field: str) -> None:
    method = admin.post if path.endswith("topups") else admin.put
    def money(credits: dict[str, Any]) -> dict[str, Any]:  # the forecast of an empty balance says "now"
        return {k: v for k, v in credits.items() if k != "forecast"}

    before = (await admin.get(f"/accounts/{account}/credits")).json()["result"]
    refused(await method(f"/accounts/{account}{path}", json=body), 422, field)
    assert money((await admin.get(f"/accounts/{account}/credits")).json()["result"]) == money(before)
    assert (await admin.get(f"/accounts/{account}/billing/spending-limit")).json()["result"] is None


async def test_gateway_amounts_past_the_maximum_are_422(admin: httpx.AsyncClient, base: str) -> None:
    refused(await admin.post(f"{base}/spend-limits", json={**RULE, "budget_usd": "1e13"}), 422, "budget_usd")
    for price, in_range in (("1e999999", False), ("1e-999999", False), ("2000000", True)):
        entry = {"provider": "openai", "model": "m", "input_per_mtok": price, "output_per_mtok": "1"}
        answer = await admin.put(f"{base}/prices", json={"prices": [entry]})
        if in_range:
            assert answer.status_code == 200, answer.text
        else:
            refused(answer, 422, "prices[0].input_per_mtok")
    assert (await admin.get(f"{base}/spend-limits")).json()["result"] == []


@settings(max_examples=50, deadline=None)
@given(st.one_of(st.decimals(allow_nan=True, allow_infinity=True).map(str), st.integers().map(str),
                 st.from_regex(r"-?[0-9]{0,25}(\.[0-9]{0,12})?(e-?[0-9]{1,10})?", fullmatch=True),
                 st.text(max_size=30)))
def test_a_parsed_amount_always_fits_a_bigint(text: str) -> None:
    try:
        amount = parse_usd(text, allow_zero=True)
    except InvalidAmount:
        return
    assert Decimal(0) <= amount <= MAX_USD and 0 <= to_nano(amount) <= BIGINT_MAX


@pytest.fixture(scope="module")
def spare_database_url() -> Iterator[str]:
    """A database of its own: the overflow test fills the platform's funding account to the BIGINT limit, which
    would refuse every later top-up of the session's shared database."""
    with fresh_database() as url:
        yield url


async def test_a_top_up_past_the_bigint_balance_is_422_and_posts_nothing(spare_database_url: str) -> None:
    db = await Database.connect(spare_database_url, min_size=1, max_size=4)
    try:
        app = create_app(Settings(database_url=db.url, admin_token=ADMIN_TOKEN), db=db, background=False)
        async with app.router.lifespan_context(app), client_for(app) as admin:
            assert (await admin.post("/accounts", json={"id": "whale"})).status_code == 201
            for i in range(9):  # 9e9 USD = 9e18 nano-USD, just under BIGINT's 9.22e18
                topup = {"amount_usd": "1000000000", "idempotency_key": f"t{i}"}
                assert (await admin.post("/accounts/whale/credits/topups", json=topup)).status_code == 201
            topup = {"amount_usd": "1000000000", "idempotency_key": "one-too-many"}
            refused(await admin.post("/accounts/whale/credits/topups", json=topup), 422, "amount_usd")
            assert await balance(admin, "whale") == "9000000000.00"
            statement = (await admin.get("/accounts/whale/credits/statement")).json()["result"]
            assert len(statement) == 9
            # a smaller top-up that still fits goes through: the refusal left nothing locked or half-posted
            topup = {"amount_usd": "1", "idempotency_key": "small"}
            assert (await admin.post("/accounts/whale/credits/topups", json=topup)).status_code == 201
            assert await balance(admin, "whale") == "9000000001.00"
    finally:
        await db.close()


# -- cursors, limits, dates, filters ---------------------------------------------------------------------------

GARBAGE_CURSORS = [
    "!!!not-base64", cursor_of(b"\xff\xfe\x00"), cursor_of(b"5"), cursor_of(b"[1, 2]"), cursor_of(b'{"a": 1}'),
    cursor_of(b'["x", "y"]'), cursor_of(b'[5, "x"]'), cursor_of(b'"a\\u0000"'), cursor_of(b"[" * 500),
    cursor_of(b'["2020-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]'),  # a time without a zone
    cursor_of(b'["0001-01-01T00:00:00+23:59", "00000000-0000-0000-0000-000000000000"]'),  # before year 1 in UTC
]


@pytest.mark.parametrize("cursor", GARBAGE_CURSORS)
async def test_garbage_cursors_are_422(admin: httpx.AsyncClient, base: str, account: str, cursor: str) -> None:
    for path in ("/accounts", f"/accounts/{account}/credits/statement", f"{base}/logs"):
        refused(await admin.get(path, params={"cursor": cursor}), 422, "cursor")


async def test_page_limits_out_of_range_are_422(admin: httpx.AsyncClient, base: str) -> None:
    # "\u0665" is ARABIC-INDIC DIGIT FIVE, which int() reads as 5
    for limit in ("-1", "0", "501", "9" * 30, "1e3", " 5", "\u0665"):
        for path in ("/accounts", f"{base}/logs"):
            refused(await admin.get(path, params={"limit": limit}), 422, "limit")


async def test_bad_dates_are_422_naming_the_field(admin: httpx.AsyncClient, base: str, account: str) -> None:
    for path in (f"/accounts/{account}/credits/statement", f"{base}/logs"):
        refused(await admin.get(path, params={"from": "0001-01-01T00:00:00+23:59"}), 422, "from")
        refused(await admin.get(path, params={"to": "2026-13-01T00:00:00Z"}), 422, "to")
        refused(await admin.get(path, params={"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}),
                422, "to")


async def test_log_filters_are_validated_or_harmless(admin: httpx.AsyncClient, base: str) -> None:
    refused(await admin.get(f"{base}/logs", params={"status_code": "99999999999"}), 422, "status_code")
    refused(await admin.get(f"{base}/logs", params={"status_code": "42"}), 422, "status_code")
    refused(await admin.get(f"{base}/logs", params={"success": "maybe"}), 422, "success")
    refused(await admin.get(f"{base}/logs", params={"model": "gpt\x00"}), 422, "model")
    refused(await admin.get(f"{base}/logs", params={"metadata.team": "a\r\nb"}), 422, "metadata.team")
    for params in ({"group": "eng"}, {"metadata.te'am": "x"}, {"metadata.a\\": "y"}, {"email": "x' OR '1'='1"}):
        answer = await admin.get(f"{base}/logs", params=params)
        assert answer.status_code == 200 and answer.json()["result"] == [], (params, answer.text)


# -- JSON bodies -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "field"), [
    (b'{"name": "daily", "budget_usd": "1", "window": "daily", "alert_at": [NaN]}', "alert_at[0]"),
    (b'{"name": "daily", "budget_usd": "1", "window": "daily", "alert_at": [Infinity]}', "alert_at[0]"),
    (b'{"name": "daily", "budget_usd": "1", "window": "daily", "alert_at": [1e400]}', "alert_at[0]"),
    (b'{"name": "daily", "budget_usd": "1", "window": "daily", "scope": {"model": {"equals": -Infinity}}}',
     "scope.model.equals"),
    (b'{"name": "daily", "budget_usd": "1", "window": "daily", "scope": {"model": {"equals": 1e99999}}}',
     "scope.model.equals"),
    (b'{"name": "daily", "budget_usd": "1", "window": "daily", "alert_at": ["sNaN"]}', "alert_at"),
    (b'{"name": "daily", "budget_usd": "1", "window": "daily", "alert_at": ["half"]}', "alert_at"),
    (b'{"name": "daily", "budget_usd": NaN, "window": "daily"}', "budget_usd"),
])
async def test_non_finite_numbers_are_422_naming_the_field(admin: httpx.AsyncClient, base: str, body: bytes,
                                                           field: str) -> None:
    refused(await admin.post(f"{base}/spend-limits", content=body), 422, field)
    assert (await admin.get(f"{base}/spend-limits")).json()["result"] == []


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/accounts", {"id": "acme\x00"}, "id"),
    ("{account}/credits/topups", {"amount_usd": "1", "idempotency_key": "k\x00"}, "idempotency_key"),
    ("{account}/credits/topups", {"amount_usd": "1", "idempotency_key": "k\r\nX-Injected: 1"}, "idempotency_key"),
    ("{base}/spend-limits", {**RULE, "name": "daily\x00"}, "name"),
    ("{base}/spend-limits", {**RULE, "scope": {"model": {"equals": "gpt\x00"}}}, "scope.model.equals"),
    ("{base}/tokens", {"name": "ci\nbot"}, "name"),
    ("{base}/tokens", {"name": "\ud800"}, "name"),
    ("{base}/provider-keys", {"provider": "openai", "key": "sk-12345678\x00"}, "key"),
    ("{base}/policies", {"group": "eng\x00", "models": ["groq/*"]}, "group"),
    ("{base}/policies", {"group": "eng", "models": ["groq/*\x7f"]}, "models[0]"),
    ("{base}/custom-providers", {"slug": "vllm", "base_url": "http://h\x00"}, "base_url"),
    ("{base}/routes", {"name": "main", "graph": {**GRAPH, "start": "m\x00"}}, "graph.start"),
])
async def test_control_characters_in_strings_are_422_naming_the_field(
        admin: httpx.AsyncClient, account: str, base: str, path: str, body: dict[str, Any], field: str) -> None:
    url = path.format(account=f"/accounts/{account}", base=base)
    before = await balance(admin, account)
    refused(await admin.post(url, content=json.dumps(body).encode()), 422, field)
    assert await balance(admin, account) == before
    for listing in ("spend-limits", "tokens", "provider-keys", "policies", "custom-providers", "routes"):
        assert (await admin.get(f"{base}/{listing}")).json()["result"] == [], listing


async def test_control_characters_in_settings_and_prices_are_422(admin: httpx.AsyncClient, base: str) -> None:
    refused(await admin.patch(base, json={"alert_webhook": "http://h\x00"}), 422, "alert_webhook")
    refused(await admin.patch(base, json={"log_retention": {"max_rows": 5, "strategy": "\x00"}}), 422,
            "log_retention.strategy")
    entry = {"provider": "openai", "model": "gpt\x00", "input_per_mtok": "1", "output_per_mtok": "1"}
    refused(await admin.put(f"{base}/prices", json={"prices": [entry]}), 422, "prices[0].model")
    gateway = (await admin.get(base)).json()["result"]
    assert gateway["alert_webhook"] is None and gateway["log_retention"] is None


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000,
                                  b'{"log_retention":' + b'{"a":' * 100 + b"1" + b"}" * 101])
async def test_nesting_bombs_are_4xx(admin: httpx.AsyncClient, base: str, body: bytes) -> None:
    refused(await admin.patch(base, content=body), 422)
    refused(await admin.post("/accounts", content=body), 422)
    assert (await admin.get(base)).json()["result"]["log_retention"] is None


async def test_bodies_that_are_not_objects_are_422(admin: httpx.AsyncClient, account: str, base: str) -> None:
    for body in (b'"acme"', b"[]", b"5", b"null", b"\xff\xfe", b'{"id": "a"} trailing'):
        refused(await admin.post("/accounts", content=body), 422)
        refused(await admin.post(f"/accounts/{account}/credits/topups", content=body), 422)
    refused(await admin.put(f"{base}/prices", json={"prices": [5]}), 422, "prices[0]")


# -- other input that reached the database unchecked ------------------------------------------------------------


async def test_integers_past_their_columns_are_422(admin: httpx.AsyncClient, base: str) -> None:
    assert (await admin.post(f"{base}/routes", json={"name": "main", "graph": GRAPH})).status_code == 201
    for version in (10**30, 2**40, 0, -1):
        refused(await admin.post(f"{base}/routes/main/deploy", json={"version": version}), 422, "version")
    refused(await admin.patch(base, json={"log_retention": {"max_rows": 10**30}}), 422, "log_retention.max_rows")
    refused(await admin.patch(base, json={"log_retention": {"max_rows": 2**62}}), 422, "log_retention")
    refused(await admin.patch(base, json={"default_max_output_tokens": 2**40}), 422, "default_max_output_tokens")
    refused(await admin.post(f"{base}/spend-limits", json={**RULE, "scope": {"model": {"equals": 10**30}}}), 422,
            "scope.model.equals")
    assert (await admin.get(base)).json()["result"]["log_retention"] is None


async def test_duplicate_prices_are_422_and_keep_the_old_ones(admin: httpx.AsyncClient, base: str) -> None:
    entry = {"provider": "openai", "model": "m", "input_per_mtok": "1", "output_per_mtok": "2"}
    assert (await admin.put(f"{base}/prices", json={"prices": [entry]})).status_code == 200
    refused(await admin.put(f"{base}/prices", json={"prices": [{**entry, "model": "n"}, {**entry, "model": "n"}]}),
            422, "prices[1]")
    assert [p["model"] for p in (await admin.get(f"{base}/prices")).json()["result"]] == ["m"]


async def test_broken_urls_are_422(admin: httpx.AsyncClient, base: str) -> None:
    refused(await admin.post(f"{base}/custom-providers", json={"slug": "vllm", "base_url": "http://[::1"}), 422,
            "base_url")
    refused(await admin.patch(base, json={"alert_webhook": "http://[::1"}), 422, "alert_webhook")
    refused(await admin.patch(base, json={"alert_webhook": "http://"}), 422, "alert_webhook")


async def test_too_many_alert_fractions_is_422_not_a_conflict(admin: httpx.AsyncClient, base: str) -> None:
    refused(await admin.post(f"{base}/spend-limits", json={**RULE, "alert_at": [0.5] * 11}), 422, "alert_at")
