"""The admin ASGI app: every capability's router, behind the admin token."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.admin import accounts, gateways, limits, logs
from gateway.admin.api import AdminRouter, create_admin_app
from gateway.admin.token import AdminTokenCheck

if TYPE_CHECKING:  # the CLI imports ROUTERS without the serving machinery
    from gateway.services import Services

ROUTERS: list[AdminRouter] = [accounts.router, gateways.router, limits.router, logs.router]


def admin_app(services: Services) -> Any:
    check: AdminTokenCheck | None = None

    async def authenticate(token: str | None) -> bool:
        nonlocal check
        if check is None:
            check = AdminTokenCheck(services.db, services.settings.admin_token)
        return await check(token)

    return create_admin_app(ROUTERS, services, authenticate)
