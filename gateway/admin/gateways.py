"""Admin endpoints: gateways and their settings (the `gateways` table, through GatewayStore), and the purge of a
gateway's response cache (gateway/cache/store.py).

A gateway's stored provider keys, custom providers, price overrides and tokens have their own modules."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.admin.accounts import ensure_account
from gateway.admin.api import (
    AdminError,
    AdminRouter,
    AdminServices,
    Created,
    Page,
    admin_error,
    json_body,
    not_found,
    page_of,
    page_params,
    str_field,
)
from gateway.cache.store import CacheStore
from gateway.errors import SettingsError, UnknownAccount, UnknownGateway
from gateway.gateways import (
    ID_PATTERN,
    GatewayRecord,
    GatewaySettings,
    valid_id,
)
from gateway.limits.buckets import rate_status
from gateway.limits.rate_rules import MAX_INTERVAL_S, MAX_LIMIT, MAX_RATE_LIMITS, TECHNIQUES, UNITS, rules_of
from gateway.limits.rules import json_safe

TAG = "gateways and providers"  # the OpenAPI tag of this module's endpoints and of the gateway's configuration
router = AdminRouter(TAG)

SETTINGS_SCHEMA: dict[str, Any] = {"type": "object", "description": "any of the gateway settings",
                   "properties": {name: {} for name in GatewaySettings().to_json()}}
_SCOPE = {"type": "object", "description": "dimension (provider, model, metadata.<key>, cf.user_id, cf.user.email, "
          "cf.user.groups, cf.service_token) -> {\"split\": true} or {\"equals\": value}",
          "additionalProperties": {"type": "object"}}
SETTINGS_SCHEMA["properties"]["rate_limits"] = {
    "type": "array", "maxItems": MAX_RATE_LIMITS,
    "description": "requests or tokens per interval, counted across every instance; exceeded: 429 with Retry-After",
    "items": {"type": "object", "required": ["name", "limit", "interval_s"], "additionalProperties": False,
              "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 100},
                             "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                             "interval_s": {"type": "integer", "minimum": 1, "maximum": MAX_INTERVAL_S},
                             "technique": {"enum": list(TECHNIQUES), "default": "fixed"},
                             "unit": {"enum": list(UNITS), "default": "requests"},
                             "scope": _SCOPE}}}


async def ensure_gateway(services: AdminServices, account: str, gateway: str) -> GatewayRecord:
    """The gateway as stored (404 when the account or the gateway does not exist; `default` always does)."""
    try:
        return await services.gateways.record(account, gateway)
    except UnknownAccount:
        raise not_found(f"account {account!r}") from None
    except UnknownGateway:
        raise not_found(f"gateway {gateway!r}") from None


def gateway_view(record: GatewayRecord) -> dict[str, Any]:
    return {"id": record.id, **record.settings.to_json(),
            "created_at": record.created_at.isoformat(), "updated_at": record.updated_at.isoformat()}


def validate_settings(data: dict[str, Any], base: GatewaySettings | None = None) -> GatewaySettings:
    try:
        return GatewaySettings.from_json(data, base=base)
    except SettingsError as exc:
        raise admin_error(exc) from None


@router.route("GET", "/accounts/{account}/gateways", "List gateways", paginated=True)
async def list_gateways(request: Request, services: AdminServices, account: str) -> Page:
    await ensure_account(services, account)
    after, limit = page_params(request, "text")
    records = await services.gateways.records(account, after=None if after is None else after[0], limit=limit + 1)
    return page_of(records, limit, lambda r: (r.id,), gateway_view)


@router.route("POST", "/accounts/{account}/gateways", "Create a gateway",
              body={**SETTINGS_SCHEMA, "required": ["id"],
                    "properties": {"id": {"type": "string", "pattern": ID_PATTERN},
                                   **SETTINGS_SCHEMA["properties"]}})
async def create_gateway(request: Request, services: AdminServices, account: str) -> Created:
    await ensure_account(services, account)
    data = await json_body(request)
    gateway_id = str_field(data, "id", max_length=63)
    if gateway_id is None or not valid_id(gateway_id):
        raise AdminError(422, "id must be 1-63 characters: lowercase letters, digits, '-' or '_'", "id")
    settings = validate_settings({k: v for k, v in data.items() if k != "id"})
    record = await services.gateways.create(account, gateway_id, settings)
    if record is None:
        raise AdminError(409, f"gateway {gateway_id!r} already exists", "id")
    return Created(gateway_view(record))


@router.route("GET", "/accounts/{account}/gateways/{gateway}", "Get a gateway and its settings")
async def get_gateway(request: Request, services: AdminServices, account: str, gateway: str) -> dict[str, Any]:
    return gateway_view(await ensure_gateway(services, account, gateway))


@router.route("PATCH", "/accounts/{account}/gateways/{gateway}", "Change settings", body=SETTINGS_SCHEMA)
async def patch_gateway(request: Request, services: AdminServices, account: str, gateway: str) -> dict[str, Any]:
    current = await ensure_gateway(services, account, gateway)
    settings = validate_settings(await json_body(request), current.settings)
    return gateway_view(await services.gateways.update(account, gateway, settings))


@router.route("DELETE", "/accounts/{account}/gateways/{gateway}", "Delete a gateway (and its configuration)")
async def delete_gateway(request: Request, services: AdminServices, account: str, gateway: str) -> dict[str, Any]:
    await ensure_gateway(services, account, gateway)
    await services.gateways.delete(account, gateway)
    return {"id": gateway, "deleted": True}


@router.route("GET", "/accounts/{account}/gateways/{gateway}/rate-limits",
              "The gateway's rate limits, with what each bucket counts now")
async def get_rate_limits(request: Request, services: AdminServices, account: str, gateway: str) -> dict[str, Any]:
    """Each rule of the `rate_limits` setting as stored, with `buckets`: `[{"key", "window_start", "counted",
    "pending", "remaining", "frees_at"}]` — in the rule's unit (requests or tokens), for the buckets that count
    something now (a sliding interval: `window_start` is where counting starts now)."""
    record = await ensure_gateway(services, account, gateway)
    now = services.clock()
    rules = []
    for rule in rules_of(account, gateway, record.settings.rate_limits or []):
        buckets = await rate_status(services.db, rule, now)
        rules.append({**rule.raw, "buckets": [
            {"key": json_safe(b["key"]), "window_start": b["window_start"].isoformat(), "counted": b["counted"],
             "pending": b["pending"], "remaining": b["remaining"], "frees_at": b["frees_at"].isoformat()}
            for b in buckets]})
    return {"rate_limits": rules}


@router.route("DELETE", "/accounts/{account}/gateways/{gateway}/cache",
              "Purge the gateway's response cache (every instance's: the entries are shared)")
async def purge_cache(request: Request, services: AdminServices, account: str, gateway: str) -> dict[str, Any]:
    await ensure_gateway(services, account, gateway)
    return {"gateway": gateway, "purged": await CacheStore(services.db).purge(account, gateway)}
