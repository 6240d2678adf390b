"""Admin endpoints: a gateway's stored provider keys (through gateway.providers.store.ProviderKeys, the store the
router reads them through). A key is never shown again once stored: only its last four characters."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.admin.api import (
    AdminError,
    AdminRouter,
    AdminServices,
    Created,
    Page,
    json_body,
    not_found,
    page_of,
    page_params,
    str_field,
)
from gateway.admin.custom_providers import SLUG_RE
from gateway.admin.gateways import TAG, ensure_gateway
from gateway.providers.store import StoredKey
from gateway.settings import PROVIDERS

router = AdminRouter(TAG)


def key_view(key: StoredKey) -> dict[str, Any]:
    return {"id": str(key.id), "provider": key.provider, "alias": key.alias, "key_last4": key.last4,
            "created_at": key.created_at.isoformat()}


def provider_field(data: dict[str, Any]) -> str:
    """A built-in provider's name or `custom-{slug}` (422 otherwise)."""
    provider = str_field(data, "provider", max_length=60)
    assert provider is not None
    if provider not in PROVIDERS and not (provider.startswith("custom-") and SLUG_RE.match(provider[7:])):
        raise AdminError(422, f"provider must be one of {', '.join(PROVIDERS)} or custom-{{slug}}", "provider")
    return provider


@router.route("GET", "/accounts/{account}/gateways/{gateway}/provider-keys", "Stored keys (never the key itself)",
              paginated=True)
async def list_keys(request: Request, services: AdminServices, account: str, gateway: str) -> Page:
    await ensure_gateway(services, account, gateway)
    after, limit = page_params(request, "text", "text")
    keys = await services.providers.keys.page(account, gateway, (after[0], after[1]) if after else None, limit + 1)
    return page_of(keys, limit, lambda k: (k.provider, k.alias), key_view)


@router.route("POST", "/accounts/{account}/gateways/{gateway}/provider-keys", "Store a provider key",
              body={"type": "object", "required": ["provider", "key"],
                    "properties": {"provider": {"type": "string"}, "alias": {"type": "string", "default": "default"},
                                   "key": {"type": "string", "writeOnly": True}}})
async def create_key(request: Request, services: AdminServices, account: str, gateway: str) -> Created:
    await ensure_gateway(services, account, gateway)
    data = await json_body(request)
    provider = provider_field(data)
    alias = str_field(data, "alias", required=False, max_length=64) or "default"
    secret = str_field(data, "key", max_length=4096)
    assert secret is not None
    if len(secret) < 8:
        raise AdminError(422, "key is too short to be a provider key", "key")
    key = await services.providers.keys.add(account, gateway, provider, alias, secret)
    if key is None:
        raise AdminError(409, f"a {provider} key with alias {alias!r} already exists: delete it first", "alias")
    return Created(key_view(key))


@router.route("DELETE", "/accounts/{account}/gateways/{gateway}/provider-keys/{key_id}", "Delete a stored key")
async def delete_key(request: Request, services: AdminServices, account: str, gateway: str,
                     key_id: str) -> dict[str, Any]:
    await ensure_gateway(services, account, gateway)
    if not await services.providers.keys.delete(account, gateway, key_id):
        raise not_found(f"provider key {key_id!r}")
    return {"id": key_id, "deleted": True}
