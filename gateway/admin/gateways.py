"""Admin endpoints: gateways and their settings, stored provider keys, custom providers, price overrides."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from starlette.requests import Request

from gateway.admin.accounts import ensure_account
from gateway.admin.api import (
    AdminError,
    AdminRouter,
    Created,
    Page,
    json_body,
    not_found,
    page_of,
    page_params,
    str_field,
)
from gateway.gateways import ID_PATTERN, GatewaySettings, SettingsError, valid_id
from gateway.money import InvalidAmount, parse_usd
from gateway.pricing import PRICE_FIELDS
from gateway.settings import PROVIDERS

router = AdminRouter("gateways and providers")

SETTINGS_SCHEMA: dict[str, Any] = {"type": "object", "description": "any of the gateway settings",
                   "properties": {name: {} for name in GatewaySettings().to_json()}}
# `\Z`, not `$` (which also matches before a trailing newline); SLUG_PATTERN is the rule for JSON Schema.
SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,40}\Z")
SLUG_PATTERN = "^[a-z0-9][a-z0-9-]{0,40}$"


async def ensure_gateway(db: Any, account: str, gateway: str) -> dict[str, Any]:
    """The gateway's row; `default` exists for every account (created here for accounts older than that rule)."""
    query = "SELECT id, settings, created_at, updated_at FROM gateways WHERE account_id = $1 AND id = $2"
    row = await db.pool.fetchrow(query, account, gateway)
    if row is None:
        await ensure_account(db, account)
        if gateway != "default":
            raise not_found(f"gateway {gateway!r}")
        await db.pool.execute("INSERT INTO gateways (account_id, id) VALUES ($1, 'default') ON CONFLICT DO NOTHING",
                              account)
        row = await db.pool.fetchrow(query, account, gateway)
    return dict(row)


def gateway_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"id": row["id"], **GatewaySettings.from_json(row["settings"]).to_json(),
            "created_at": row["created_at"].isoformat(), "updated_at": row["updated_at"].isoformat()}


def validate_settings(data: dict[str, Any], base: GatewaySettings | None = None) -> GatewaySettings:
    try:
        return GatewaySettings.from_json(data, base=base)
    except SettingsError as exc:
        raise AdminError(422, str(exc), exc.field) from None


@router.route("GET", "/accounts/{account}/gateways", "List gateways", paginated=True)
async def list_gateways(request: Request, services: Any, account: str) -> Page:
    await ensure_account(services.db, account)
    after, limit = page_params(request, "text")
    rows = await services.db.pool.fetch(
        "SELECT id, settings, created_at, updated_at FROM gateways WHERE account_id = $1 "
        "AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3", account, *(after or (None,)), limit + 1,
    )
    return page_of(rows, limit, lambda r: (r["id"],), lambda r: gateway_view(dict(r)))


@router.route("POST", "/accounts/{account}/gateways", "Create a gateway",
              body={**SETTINGS_SCHEMA, "required": ["id"],
                    "properties": {"id": {"type": "string", "pattern": ID_PATTERN},
                                   **SETTINGS_SCHEMA["properties"]}})
async def create_gateway(request: Request, services: Any, account: str) -> Created:
    await ensure_account(services.db, account)
    data = await json_body(request)
    gateway_id = str_field(data, "id", max_length=63)
    if not valid_id(gateway_id or ""):
        raise AdminError(422, "id must be 1-63 characters: lowercase letters, digits, '-' or '_'", "id")
    settings = validate_settings({k: v for k, v in data.items() if k != "id"})
    try:
        row = await services.db.pool.fetchrow(
            "INSERT INTO gateways (account_id, id, settings) VALUES ($1, $2, $3) "
            "RETURNING id, settings, created_at, updated_at",
            account, gateway_id, settings.to_json(),
        )
    except asyncpg.UniqueViolationError:
        raise AdminError(409, f"gateway {gateway_id!r} already exists", "id") from None
    return Created(gateway_view(dict(row)))


@router.route("GET", "/accounts/{account}/gateways/{gateway}", "Get a gateway and its settings")
async def get_gateway(request: Request, services: Any, account: str, gateway: str) -> dict[str, Any]:
    return gateway_view(await ensure_gateway(services.db, account, gateway))


@router.route("PATCH", "/accounts/{account}/gateways/{gateway}", "Change settings", body=SETTINGS_SCHEMA)
async def patch_gateway(request: Request, services: Any, account: str, gateway: str) -> dict[str, Any]:
    current = await ensure_gateway(services.db, account, gateway)
    data = await json_body(request)
    settings = validate_settings(data, GatewaySettings.from_json(current["settings"]))
    row = await services.db.pool.fetchrow(
        "UPDATE gateways SET settings = $3, updated_at = now() WHERE account_id = $1 AND id = $2 "
        "RETURNING id, settings, created_at, updated_at",
        account, gateway, settings.to_json(),
    )
    services.gateways.invalidate("gateways")  # this instance at once; the others through NOTIFY
    return gateway_view(dict(row))


@router.route("DELETE", "/accounts/{account}/gateways/{gateway}", "Delete a gateway (and its configuration)")
async def delete_gateway(request: Request, services: Any, account: str, gateway: str) -> dict[str, Any]:
    await ensure_gateway(services.db, account, gateway)
    await services.db.pool.execute("DELETE FROM gateways WHERE account_id = $1 AND id = $2", account, gateway)
    services.gateways.invalidate("gateways")
    return {"id": gateway, "deleted": True}


# -- stored provider keys --------------------------------------------------------------------------------------


def key_view(row: Any) -> dict[str, Any]:
    return {"id": str(row["id"]), "provider": row["provider"], "alias": row["alias"],
            "key_last4": row["secret"][-4:], "created_at": row["created_at"].isoformat()}


def provider_field(data: dict[str, Any]) -> str:
    provider = str_field(data, "provider", max_length=60)
    assert provider is not None
    if provider not in PROVIDERS and not (provider.startswith("custom-") and SLUG_RE.match(provider[7:])):
        raise AdminError(422, f"provider must be one of {', '.join(PROVIDERS)} or custom-{{slug}}", "provider")
    return provider


@router.route("GET", "/accounts/{account}/gateways/{gateway}/provider-keys", "Stored keys (never the key itself)",
              paginated=True)
async def list_keys(request: Request, services: Any, account: str, gateway: str) -> Page:
    await ensure_gateway(services.db, account, gateway)
    after, limit = page_params(request, "text", "text")
    rows = await services.db.pool.fetch(
        "SELECT * FROM provider_keys WHERE account_id = $1 AND gateway_id = $2 "
        "AND ($3::text IS NULL OR (provider, alias) > ($3, $4::text)) ORDER BY provider, alias LIMIT $5",
        account, gateway, *(after or (None, None)), limit + 1,
    )
    return page_of(rows, limit, lambda r: (r["provider"], r["alias"]), key_view)


@router.route("POST", "/accounts/{account}/gateways/{gateway}/provider-keys", "Store a provider key",
              body={"type": "object", "required": ["provider", "key"],
                    "properties": {"provider": {"type": "string"}, "alias": {"type": "string", "default": "default"},
                                   "key": {"type": "string", "writeOnly": True}}})
async def create_key(request: Request, services: Any, account: str, gateway: str) -> Created:
    await ensure_gateway(services.db, account, gateway)
    data = await json_body(request)
    provider = provider_field(data)
    alias = str_field(data, "alias", required=False, max_length=64) or "default"
    secret = str_field(data, "key", max_length=4096)
    assert secret is not None
    if len(secret) < 8:
        raise AdminError(422, "key is too short to be a provider key", "key")
    try:
        row = await services.db.pool.fetchrow(
            "INSERT INTO provider_keys (account_id, gateway_id, provider, alias, secret) VALUES ($1, $2, $3, $4, $5) "
            "RETURNING *",
            account, gateway, provider, alias, secret,
        )
    except asyncpg.UniqueViolationError:
        raise AdminError(409, f"a {provider} key with alias {alias!r} already exists: delete it first",
                         "alias") from None
    services.providers.invalidate()
    return Created(key_view(row))


@router.route("DELETE", "/accounts/{account}/gateways/{gateway}/provider-keys/{key_id}", "Delete a stored key")
async def delete_key(request: Request, services: Any, account: str, gateway: str, key_id: str) -> dict[str, Any]:
    await ensure_gateway(services.db, account, gateway)
    try:
        deleted = await services.db.pool.fetchval(
            "DELETE FROM provider_keys WHERE account_id = $1 AND gateway_id = $2 AND id = $3::uuid RETURNING id",
            account, gateway, key_id,
        )
    except asyncpg.DataError:
        deleted = None
    if deleted is None:
        raise not_found(f"provider key {key_id!r}")
    services.providers.invalidate()
    return {"id": key_id, "deleted": True}


# -- custom providers ------------------------------------------------------------------------------------------


@router.route("GET", "/accounts/{account}/gateways/{gateway}/custom-providers", "Custom OpenAI-compatible providers",
              paginated=True)
async def list_custom(request: Request, services: Any, account: str, gateway: str) -> Page:
    await ensure_gateway(services.db, account, gateway)
    after, limit = page_params(request, "text")
    rows = await services.db.pool.fetch(
        "SELECT slug, base_url, created_at FROM custom_providers WHERE account_id = $1 AND gateway_id = $2 "
        "AND ($3::text IS NULL OR slug > $3) ORDER BY slug LIMIT $4", account, gateway, *(after or (None,)), limit + 1,
    )
    return page_of(rows, limit, lambda r: (r["slug"],), lambda r: {
        "slug": r["slug"], "base_url": r["base_url"], "created_at": r["created_at"].isoformat()})


@router.route("POST", "/accounts/{account}/gateways/{gateway}/custom-providers",
              "Register an OpenAI-compatible server, served at /v1/{a}/{g}/custom-{slug}/...",
              body={"type": "object", "required": ["slug", "base_url"],
                    "properties": {"slug": {"type": "string", "pattern": SLUG_PATTERN},
                                   "base_url": {"type": "string", "format": "uri"}}})
async def create_custom(request: Request, services: Any, account: str, gateway: str) -> Created:
    await ensure_gateway(services.db, account, gateway)
    data = await json_body(request)
    slug = str_field(data, "slug", max_length=41)
    if not SLUG_RE.match(slug or ""):
        raise AdminError(422, "slug must be lowercase letters, digits and '-'", "slug")
    base_url = str_field(data, "base_url", max_length=2000)
    try:
        parts = urlsplit(base_url or "")
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # "http://[::1": urlsplit raises on a broken IPv6 host
        valid = False
    if not valid:
        raise AdminError(422, "base_url must be an http(s) URL", "base_url")
    try:
        row = await services.db.pool.fetchrow(
            "INSERT INTO custom_providers (account_id, gateway_id, slug, base_url) VALUES ($1, $2, $3, $4) "
            "RETURNING slug, base_url, created_at",
            account, gateway, slug, (base_url or "").rstrip("/"),
        )
    except asyncpg.UniqueViolationError:
        raise AdminError(409, f"custom provider {slug!r} already exists", "slug") from None
    services.providers.invalidate()
    return Created({"slug": row["slug"], "base_url": row["base_url"], "created_at": row["created_at"].isoformat()})


@router.route("DELETE", "/accounts/{account}/gateways/{gateway}/custom-providers/{slug}", "Remove a custom provider")
async def delete_custom(request: Request, services: Any, account: str, gateway: str, slug: str) -> dict[str, Any]:
    await ensure_gateway(services.db, account, gateway)
    deleted = await services.db.pool.fetchval(
        "DELETE FROM custom_providers WHERE account_id = $1 AND gateway_id = $2 AND slug = $3 RETURNING slug",
        account, gateway, slug,
    )
    if deleted is None:
        raise not_found(f"custom provider {slug!r}")
    services.providers.invalidate()
    return {"slug": slug, "deleted": True}


# -- price overrides -------------------------------------------------------------------------------------------

MAX_PRICES = 1000
PRICES_SCHEMA = {
    "type": "object", "required": ["prices"],
    "properties": {"prices": {"type": "array", "items": {
        "type": "object", "required": ["provider", "model", "input_per_mtok", "output_per_mtok"],
        "properties": {"provider": {"type": "string"}, "model": {"type": "string"},
                       **{f: {"type": "string", "description": "USD per 1,000 searches" if f.endswith("_per_k")
                              else "USD per million tokens"} for f in PRICE_FIELDS}}}}},
}


def _price(value: Any, field: str) -> Decimal | None:
    """USD per million tokens: a decimal string, zero up to money.MAX_USD, at most 9 decimal places (Postgres
    NUMERIC would take a thousand digits, and the cost of a request would then overflow nano-USD)."""
    if value is None:
        return None
    try:
        return parse_usd(value, field=field, allow_zero=True)
    except InvalidAmount as exc:
        raise AdminError(422, f"{exc} (USD per million tokens)", field) from None


def price_view(row: Any) -> dict[str, Any]:
    return {"provider": row["provider"], "model": row["model"],
            **{f: (None if row[f] is None else format(row[f], "f")) for f in PRICE_FIELDS}}


async def _prices(services: Any, account: str, gateway: str, after: tuple[Any, ...] | None, limit: int) -> list[Any]:
    return await services.db.pool.fetch(  # type: ignore[no-any-return]
        "SELECT * FROM price_overrides WHERE account_id = $1 AND gateway_id = $2 "
        "AND ($3::text IS NULL OR (provider, model) > ($3, $4::text)) ORDER BY provider, model LIMIT $5",
        account, gateway, *(after or (None, None)), limit,
    )


@router.route("GET", "/accounts/{account}/gateways/{gateway}/prices", "Per-model price overrides", paginated=True)
async def list_prices(request: Request, services: Any, account: str, gateway: str) -> Page:
    await ensure_gateway(services.db, account, gateway)
    after, limit = page_params(request, "text", "text")
    rows = await _prices(services, account, gateway, after, limit + 1)
    return page_of(rows, limit, lambda r: (r["provider"], r["model"]), price_view)


@router.route("PUT", "/accounts/{account}/gateways/{gateway}/prices",
              "Replace the price overrides (USD per million tokens, web searches per 1,000; provider '*' matches any)",
              body=PRICES_SCHEMA)
async def put_prices(request: Request, services: Any, account: str, gateway: str) -> Page:
    await ensure_gateway(services.db, account, gateway)
    data = await json_body(request)
    items = data.get("prices")
    if not isinstance(items, list) or len(items) > MAX_PRICES:
        raise AdminError(422, f"prices must be a list (at most {MAX_PRICES} entries)", "prices")
    rows = []
    seen: set[tuple[str, str | None]] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise AdminError(422, "each price must be an object", f"prices[{i}]")
        provider = item.get("provider")
        if provider != "*":
            provider = provider_field(item)
        model = str_field(item, "model", max_length=200)
        values = [_price(item.get(f), f"prices[{i}].{f}") for f in PRICE_FIELDS]
        if values[0] is None or values[1] is None:
            raise AdminError(422, "input_per_mtok and output_per_mtok are required", f"prices[{i}]")
        if (provider, model) in seen:
            raise AdminError(422, f"a second price for {provider}/{model}", f"prices[{i}]")
        seen.add((provider, model))
        rows.append((account, gateway, provider, model, *values))
    async with services.db.pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM price_overrides WHERE account_id = $1 AND gateway_id = $2", account, gateway)
        await conn.executemany(
            f"INSERT INTO price_overrides (account_id, gateway_id, provider, model, {', '.join(PRICE_FIELDS)}) "
            f"VALUES ({', '.join(f'${i}' for i in range(1, len(PRICE_FIELDS) + 5))})", rows,
        )
    services.providers.invalidate()
    return Page([price_view(r) for r in await _prices(services, account, gateway, None, MAX_PRICES)])  # all of them


# -- gateway tokens ----------------------------------------------------------------------------------------------


@router.route("GET", "/accounts/{account}/gateways/{gateway}/tokens", "Gateway tokens (never the secret)",
              paginated=True)
async def list_tokens(request: Request, services: Any, account: str, gateway: str) -> Page:
    await ensure_gateway(services.db, account, gateway)
    after, limit = page_params(request, "time", "uuid")
    rows = await services.db.pool.fetch(
        "SELECT id, name, created_at FROM gateway_tokens WHERE account_id = $1 AND gateway_id = $2 "
        "AND ($3::timestamptz IS NULL OR (created_at, id) > ($3, $4::uuid)) ORDER BY created_at, id LIMIT $5",
        account, gateway, *(after or (None, None)), limit + 1)
    return page_of(rows, limit, lambda r: (r["created_at"], r["id"]), lambda r: {
        "id": str(r["id"]), "name": r["name"], "created_at": r["created_at"].isoformat()})


@router.route("POST", "/accounts/{account}/gateways/{gateway}/tokens", "Create a token (the secret is shown once)",
              body={"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}})
async def create_token(request: Request, services: Any, account: str, gateway: str) -> Created:
    from gateway.middleware.gateway_auth import new_gateway_token, token_digest

    await ensure_gateway(services.db, account, gateway)
    name = str_field(await json_body(request), "name", max_length=100)
    token = new_gateway_token()
    row = await services.db.pool.fetchrow(
        "INSERT INTO gateway_tokens (account_id, gateway_id, name, token_sha256) VALUES ($1, $2, $3, $4) "
        "RETURNING id, name, created_at", account, gateway, name, token_digest(token))
    if "tokens" in services.extras:
        services.extras["tokens"].invalidate()
    return Created({"id": str(row["id"]), "name": row["name"], "token": token,
                    "created_at": row["created_at"].isoformat()})


@router.route("DELETE", "/accounts/{account}/gateways/{gateway}/tokens/{token_id}", "Revoke a token")
async def delete_token(request: Request, services: Any, account: str, gateway: str, token_id: str) -> dict[str, Any]:
    await ensure_gateway(services.db, account, gateway)
    try:
        deleted = await services.db.pool.fetchval(
            "DELETE FROM gateway_tokens WHERE account_id = $1 AND gateway_id = $2 AND id = $3::uuid RETURNING id",
            account, gateway, token_id)
    except asyncpg.DataError:
        deleted = None
    if deleted is None:
        raise not_found(f"token {token_id!r}")
    if "tokens" in services.extras:
        services.extras["tokens"].invalidate()
    return {"id": token_id, "deleted": True}
