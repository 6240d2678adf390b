"""Admin endpoints: a gateway's custom OpenAI-compatible providers (through
gateway.providers.store.CustomProviders, the store the router reads them through)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

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
from gateway.admin.gateways import TAG, ensure_gateway
from gateway.providers.store import CustomProvider

router = AdminRouter(TAG)

# `\Z`, not `$` (which also matches before a trailing newline); SLUG_PATTERN is the rule for JSON Schema.
SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,40}\Z")
SLUG_PATTERN = "^[a-z0-9][a-z0-9-]{0,40}$"


def custom_view(custom: CustomProvider) -> dict[str, Any]:
    return {"slug": custom.slug, "base_url": custom.base_url, "created_at": custom.created_at.isoformat()}


@router.route("GET", "/accounts/{account}/gateways/{gateway}/custom-providers", "Custom OpenAI-compatible providers",
              paginated=True)
async def list_custom(request: Request, services: AdminServices, account: str, gateway: str) -> Page:
    await ensure_gateway(services, account, gateway)
    after, limit = page_params(request, "text")
    found = await services.providers.custom.page(account, gateway, None if after is None else after[0], limit + 1)
    return page_of(found, limit, lambda c: (c.slug,), custom_view)


@router.route("POST", "/accounts/{account}/gateways/{gateway}/custom-providers",
              "Register an OpenAI-compatible server, served at /v1/{a}/{g}/custom-{slug}/...",
              body={"type": "object", "required": ["slug", "base_url"],
                    "properties": {"slug": {"type": "string", "pattern": SLUG_PATTERN},
                                   "base_url": {"type": "string", "format": "uri"}}})
async def create_custom(request: Request, services: AdminServices, account: str, gateway: str) -> Created:
    await ensure_gateway(services, account, gateway)
    data = await json_body(request)
    slug = str_field(data, "slug", max_length=41)
    if slug is None or not SLUG_RE.match(slug):
        raise AdminError(422, "slug must be lowercase letters, digits and '-'", "slug")
    base_url = str_field(data, "base_url", max_length=2000) or ""
    try:
        parts = urlsplit(base_url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # "http://[::1": urlsplit raises on a broken IPv6 host
        valid = False
    if not valid:
        raise AdminError(422, "base_url must be an http(s) URL", "base_url")
    custom = await services.providers.custom.add(account, gateway, slug, base_url)
    if custom is None:
        raise AdminError(409, f"custom provider {slug!r} already exists", "slug")
    return Created(custom_view(custom))


@router.route("DELETE", "/accounts/{account}/gateways/{gateway}/custom-providers/{slug}", "Remove a custom provider")
async def delete_custom(request: Request, services: AdminServices, account: str, gateway: str,
                        slug: str) -> dict[str, Any]:
    await ensure_gateway(services, account, gateway)
    if not await services.providers.custom.delete(account, gateway, slug):
        raise not_found(f"custom provider {slug!r}")
    return {"slug": slug, "deleted": True}
