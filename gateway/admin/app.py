"""The admin ASGI app: every capability's router, behind the admin token."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.admin import (
    accounts,
    analytics,
    custom_providers,
    gateways,
    limits,
    logs,
    prices,
    provider_keys,
    tokens,
)
from gateway.admin.api import AdminRouter, create_admin_app
from gateway.admin.token import AdminTokenCheck

if TYPE_CHECKING:  # the CLI imports ROUTERS without the serving machinery
    from starlette.types import ASGIApp

    from gateway.services import Running, Services

# in the order of the OpenAPI document
ROUTERS: list[AdminRouter] = [accounts.router, gateways.router, provider_keys.router, custom_providers.router,
                              prices.router, tokens.router, limits.router, logs.router, analytics.router]


def admin_app(services: Services) -> ASGIApp:
    """Each request's handler gets the started services (the app starts them on the first request)."""
    check: AdminTokenCheck | None = None

    async def authenticate(token: str | None) -> bool:
        nonlocal check
        if check is None:
            check = AdminTokenCheck(services.running.db, services.settings.admin_token)
        return await check(token)

    def running() -> Running:
        return services.running

    return create_admin_app(ROUTERS, running, authenticate)
