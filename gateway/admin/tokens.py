"""Admin endpoints: a gateway's tokens (through gateway.tokens.TokenStore, the store GatewayAuth checks them
through). The secret is shown once, at creation; only its hash is stored."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway.admin.api import (
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

router = AdminRouter(TAG)


@router.route("GET", "/accounts/{account}/gateways/{gateway}/tokens", "Gateway tokens (never the secret)",
              paginated=True)
async def list_tokens(request: Request, services: AdminServices, account: str, gateway: str) -> Page:
    await ensure_gateway(services, account, gateway)
    after, limit = page_params(request, "time", "uuid")
    found = await services.tokens.page(account, gateway, (after[0], after[1]) if after else None, limit + 1)
    return page_of(found, limit, lambda t: (t.created_at, t.id), lambda t: {
        "id": str(t.id), "name": t.name, "created_at": t.created_at.isoformat()})


@router.route("POST", "/accounts/{account}/gateways/{gateway}/tokens", "Create a token (the secret is shown once)",
              body={"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}})
async def create_token(request: Request, services: AdminServices, account: str, gateway: str) -> Created:
    await ensure_gateway(services, account, gateway)
    name = str_field(await json_body(request), "name", max_length=100)
    assert name is not None
    record, token = await services.tokens.create(account, gateway, name)
    return Created({"id": str(record.id), "name": record.name, "token": token,
                    "created_at": record.created_at.isoformat()})


@router.route("DELETE", "/accounts/{account}/gateways/{gateway}/tokens/{token_id}", "Revoke a token")
async def delete_token(request: Request, services: AdminServices, account: str, gateway: str,
                       token_id: str) -> dict[str, Any]:
    await ensure_gateway(services, account, gateway)
    if not await services.tokens.delete(account, gateway, token_id):
        raise not_found(f"token {token_id!r}")
    return {"id": token_id, "deleted": True}
