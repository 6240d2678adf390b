"""Admin endpoints: spend-limit rules (with each bucket's spend), identity policies, dynamic routes.

A rule is returned as it was given plus `id` and `buckets`: `[{"key", "window_start", "spent_usd",
"pending_usd", "remaining_usd", "forecast"}]` for the current window (rolling windows: `window_start` is where
counting starts now; `forecast`: gateway/analytics/budgets.py). Buckets appear once a request has touched them.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from starlette.requests import Request

from gateway.admin.api import (
    AdminError,
    AdminRouter,
    AdminServices,
    Created,
    Page,
    admin_error,
    invalid_cursor,
    json_body,
    not_found,
    page_of,
    page_params,
)
from gateway.admin.gateways import ensure_gateway
from gateway.analytics.budgets import rule_forecasts
from gateway.errors import PolicyError, RouteError, RouteNotFound, RuleError
from gateway.limits.policies import validate_policy
from gateway.limits.rules import Rule, json_safe
from gateway.limits.store import bucket_status
from gateway.money import usd_str
from gateway.routes.store import MAX_VERSION

router = AdminRouter("spend limits, policies and dynamic routes")

RULE_SCHEMA = {
    "type": "object", "required": ["name", "budget_usd", "window"],
    "properties": {
        "name": {"type": "string"}, "budget_usd": {"type": "string"},
        "window": {"enum": ["daily", "weekly", "monthly"]}, "window_type": {"enum": ["fixed", "rolling"]},
        "scope": {"type": "object", "description": 'dimension -> {"split": true} | {"equals": value}'},
        "action": {"description": '"block" | "monitor" | {"fallback_model": "provider/model"}'},
        "alert_at": {"type": "array", "items": {"type": "number"}},
    },
}
ROUTE_SCHEMA = {"type": "object", "required": ["start", "elements"],
                "properties": {"start": {"type": "string"}, "elements": {"type": "array"}}}


def _uuid(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise not_found(f"{what} {value!r}") from None


async def rule_view(services: AdminServices, account: str, gateway: str, rule: Rule,
                    now: datetime) -> dict[str, Any]:
    buckets = await bucket_status(services.db, rule, now)
    forecasts = await rule_forecasts(services.db, account, gateway, rule, buckets, now)
    return {
        "id": rule.id, **rule.raw,
        # json_safe: a key stored before keys were made safe may decode to NaN or a lone surrogate
        "buckets": [{"key": json_safe(b["key"]), "window_start": b["window_start"].isoformat(),
                     "spent_usd": usd_str(b["spent_nano"]), "pending_usd": usd_str(b["pending_nano"]),
                     "remaining_usd": usd_str(b["remaining_nano"]), "forecast": f.to_json()}
                    for b, f in zip(buckets, forecasts, strict=True)],
    }


def _rule_error(exc: RuleError) -> AdminError:
    return admin_error(exc)  # TooManyRules: 409


# -- spend limits ----------------------------------------------------------------------------------------------


@router.route("GET", "/accounts/{account}/gateways/{gateway}/spend-limits", "Rules, with each bucket's spend",
              paginated=True)
async def list_rules(request: Request, services: AdminServices, account: str, gateway: str) -> Page:
    await ensure_gateway(services, account, gateway)
    after, limit = page_params(request, "time", "uuid")
    rows = await services.limit_store.rules_page(account, gateway, after, limit + 1)
    now = services.clock()
    page = page_of(rows, limit, lambda r: (r[0], r[1].id))
    page.items = [await rule_view(services, account, gateway, rule, now) for _, rule in page.items]
    return page


@router.route("POST", "/accounts/{account}/gateways/{gateway}/spend-limits", "Create a rule (at most 20)",
              body=RULE_SCHEMA)
async def create_rule(request: Request, services: AdminServices, account: str, gateway: str) -> Created:
    await ensure_gateway(services, account, gateway)
    data = await json_body(request)
    try:
        rule = await services.limit_store.create_rule(account, gateway, data)
    except RuleError as exc:
        raise _rule_error(exc) from None
    return Created(await rule_view(services, account, gateway, rule, services.clock()))


@router.route("GET", "/accounts/{account}/gateways/{gateway}/spend-limits/{rule_id}", "One rule")
async def get_rule(request: Request, services: AdminServices,
                   account: str, gateway: str, rule_id: str) -> dict[str, Any]:
    await ensure_gateway(services, account, gateway)
    rule_id = _uuid(rule_id, "rule")
    rule = next((r for r in await services.limit_store.rules(account, gateway) if r.id == rule_id), None)
    if rule is None:
        raise not_found(f"rule {rule_id!r}")
    return await rule_view(services, account, gateway, rule, services.clock())


@router.route("PUT", "/accounts/{account}/gateways/{gateway}/spend-limits/{rule_id}",
              "Replace a rule (its buckets and their spend are kept)", body=RULE_SCHEMA)
async def replace_rule(request: Request, services: AdminServices,
                       account: str, gateway: str, rule_id: str) -> dict[str, Any]:
    await ensure_gateway(services, account, gateway)
    rule_id = _uuid(rule_id, "rule")
    data = await json_body(request)
    try:
        rule = await services.limit_store.replace_rule(account, gateway, rule_id, data)
    except RuleError as exc:
        raise _rule_error(exc) from None
    if rule is None:
        raise not_found(f"rule {rule_id!r}")
    return await rule_view(services, account, gateway, rule, services.clock())


@router.route("DELETE", "/accounts/{account}/gateways/{gateway}/spend-limits/{rule_id}", "Delete a rule")
async def delete_rule(request: Request, services: AdminServices,
                      account: str, gateway: str, rule_id: str) -> dict[str, Any]:
    await ensure_gateway(services, account, gateway)
    rule_id = _uuid(rule_id, "rule")
    if not await services.limit_store.delete_rule(account, gateway, rule_id):
        raise not_found(f"rule {rule_id!r}")
    return {"id": rule_id, "deleted": True}


# -- policies --------------------------------------------------------------------------------------------------


@router.route("GET", "/accounts/{account}/gateways/{gateway}/policies", "Group -> allowed models", paginated=True)
async def list_policies(request: Request, services: AdminServices, account: str, gateway: str) -> Page:
    await ensure_gateway(services, account, gateway)
    after, limit = page_params(request, "time", "uuid")
    rows = await services.limit_store.policies_page(account, gateway, after, limit + 1)
    return page_of(rows, limit, lambda r: (r[0], r[1].id), lambda r: {
        "id": r[1].id, "group": r[1].group, "models": list(r[1].models)})


@router.route("POST", "/accounts/{account}/gateways/{gateway}/policies", "Allow a group some models",
              body={"type": "object", "required": ["group", "models"],
                    "properties": {"group": {"type": "string"}, "models": {"type": "array"}}})
async def create_policy(request: Request, services: AdminServices, account: str, gateway: str) -> Created:
    await ensure_gateway(services, account, gateway)
    try:
        group, models = validate_policy(await json_body(request))
    except PolicyError as exc:
        raise admin_error(exc) from None
    policy = await services.limit_store.create_policy(account, gateway, group, models)
    return Created({"id": policy.id, "group": policy.group, "models": list(policy.models)})


@router.route("DELETE", "/accounts/{account}/gateways/{gateway}/policies/{policy_id}", "Delete a policy")
async def delete_policy(request: Request, services: AdminServices, account: str, gateway: str,
                        policy_id: str) -> dict[str, Any]:
    await ensure_gateway(services, account, gateway)
    policy_id = _uuid(policy_id, "policy")
    if not await services.limit_store.delete_policy(account, gateway, policy_id):
        raise not_found(f"policy {policy_id!r}")
    return {"id": policy_id, "deleted": True}


# -- dynamic routes --------------------------------------------------------------------------------------------


def _route_error(exc: RouteError) -> AdminError:
    return admin_error(exc)  # RouteExists: 409


def _iso(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


@router.route("GET", "/accounts/{account}/gateways/{gateway}/routes", "Dynamic routes", paginated=True)
async def list_routes(request: Request, services: AdminServices, account: str, gateway: str) -> Page:
    await ensure_gateway(services, account, gateway)
    after, limit = page_params(request, "text")
    start = None if after is None else str(after[0])
    rows = await services.route_store.summaries(account, gateway, after=start, limit=limit + 1)
    return page_of(rows, limit, lambda r: (r["name"],), _iso)


@router.route("POST", "/accounts/{account}/gateways/{gateway}/routes",
              "Create a route; its first version is deployed",
              body={"type": "object", "required": ["name", "graph"],
                    "properties": {"name": {"type": "string"}, "graph": ROUTE_SCHEMA}})
async def create_route(request: Request, services: AdminServices, account: str, gateway: str) -> Created:
    await ensure_gateway(services, account, gateway)
    data = await json_body(request)
    try:
        return Created(await services.route_store.create(account, gateway, data.get("name"), data.get("graph")))
    except RouteError as exc:
        raise _route_error(exc) from None


@router.route("GET", "/accounts/{account}/gateways/{gateway}/routes/{name}", "A route and its deployed graph")
async def get_route(request: Request, services: AdminServices, account: str, gateway: str, name: str) -> dict[str, Any]:
    await ensure_gateway(services, account, gateway)
    found = await services.route_store.deployed_version(account, gateway, name)
    if found is None:
        raise not_found(f"route {name!r}")
    return {"name": name, "deployed_version": found[0], "graph": found[1]}


@router.route("GET", "/accounts/{account}/gateways/{gateway}/routes/{name}/versions", "Every version of a route",
              paginated=True)
async def list_versions(request: Request, services: AdminServices, account: str, gateway: str, name: str) -> Page:
    await ensure_gateway(services, account, gateway)
    after, limit = page_params(request, "int")
    version = None if after is None else int(after[0])
    if version is not None and not 0 <= version <= MAX_VERSION:
        raise invalid_cursor()
    try:
        rows = await services.route_store.versions(account, gateway, name, after=version, limit=limit + 1)
    except RouteNotFound:
        raise not_found(f"route {name!r}") from None
    return page_of(rows, limit, lambda v: (v["version"],), _iso)


@router.route("POST", "/accounts/{account}/gateways/{gateway}/routes/{name}/versions",
              "Save a new version (not deployed)", body={"type": "object", "required": ["graph"],
                                                         "properties": {"graph": ROUTE_SCHEMA}})
async def add_version(request: Request, services: AdminServices, account: str, gateway: str, name: str) -> Created:
    await ensure_gateway(services, account, gateway)
    data = await json_body(request)
    try:
        return Created(await services.route_store.add_version(account, gateway, name, data.get("graph")))
    except RouteError as exc:
        raise _route_error(exc) from None
    except RouteNotFound:
        raise not_found(f"route {name!r}") from None


@router.route("POST", "/accounts/{account}/gateways/{gateway}/routes/{name}/deploy", "Deploy a version",
              body={"type": "object", "required": ["version"], "properties": {"version": {"type": "integer"}}})
async def deploy(request: Request, services: AdminServices, account: str, gateway: str, name: str) -> dict[str, Any]:
    await ensure_gateway(services, account, gateway)
    data = await json_body(request)
    try:
        await services.route_store.deploy(account, gateway, name, data.get("version"))
    except RouteError as exc:
        raise _route_error(exc) from None
    except RouteNotFound:
        raise not_found(f"route {name!r} version {data.get('version')!r}") from None
    return {"name": name, "deployed_version": data["version"]}
