"""Admin endpoints: request logs (filtered, newest first, cursor-paginated), one log, feedback."""

from __future__ import annotations

import re
import uuid
from typing import Any

from starlette.requests import Request

from gateway.admin.api import (
    AdminError,
    AdminRouter,
    AdminServices,
    Page,
    json_body,
    not_found,
    page_of,
    page_params,
    time_range,
)
from gateway.admin.gateways import ensure_gateway
from gateway.guardrails.categories import CATEGORIES
from gateway.logs import store as log_store
from gateway.logs.store import IDENTITY_FIELDS, LogQuery

router = AdminRouter("logs")



def log_view(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["id"] = str(out["id"])
    out["gateway"] = out.pop("gateway_id")
    out["created_at"] = out["created_at"].isoformat()
    for name in ("duration_ms", "ttfb_ms"):
        out[name] = None if out[name] is None else float(out[name])
    out["cost_usd"] = None if out["cost_usd"] is None else format(out["cost_usd"].normalize(), "f")
    out["identity"] = out["identity"] or {"user_id": None, "email": None, "groups": [], "service_token": None}
    return out


@router.route("GET", "/accounts/{account}/gateways/{gateway}/logs", "Request logs, newest first", paginated=True,
              query={"provider": "", "model": "", "status_code": "", "success": "true|false",
                     "from": "ISO time", "to": "ISO time", "user_id": "identity", "email": "identity",
                     "service_token": "identity", "group": "identity group",
                     "metadata.<key>": "a metadata value (also cf.* keys)",
                     "guardrail": "a category a guardrail found (pii.email, secret.aws, ...)",
                     "cached": "true|false (answered from the response cache)"})
async def list_logs(request: Request, services: AdminServices, account: str, gateway: str) -> Page:
    await ensure_gateway(services, account, gateway)
    q = request.query_params
    query = LogQuery(account, gateway)
    query.provider = q.get("provider") or None
    query.model = q.get("model") or None
    if q.get("status_code"):
        query.status_code = status_filter(q["status_code"])
    if q.get("success"):
        if q["success"] not in ("true", "false"):
            raise AdminError(422, "success must be true or false", "success")
        query.success = q["success"] == "true"
    query.start, query.end = time_range(request)
    query.identity = {name: q[name] for name in IDENTITY_FIELDS if q.get(name)}
    query.group = q.get("group") or None
    query.metadata = {key.removeprefix("metadata."): value for key, value in q.items()
                      if key.startswith("metadata.")}
    if q.get("cached"):
        if q["cached"] not in ("true", "false"):
            raise AdminError(422, "cached must be true or false", "cached")
        query.cached = q["cached"] == "true"
    if q.get("guardrail"):
        if q["guardrail"] not in CATEGORIES:
            raise AdminError(422, f"guardrail must be one of {', '.join(CATEGORIES)}", "guardrail")
        query.guardrail = q["guardrail"]
    after, limit = page_params(request, "time", "uuid")
    query.after = (after[0], after[1]) if after is not None else None
    query.limit = limit + 1
    rows = await log_store.search(services.db, query)
    return page_of(rows, limit, lambda r: (r["created_at"], r["id"]), log_view)


def status_filter(raw: str) -> int:
    if not re.fullmatch(r"[0-9]{3}", raw) or not 100 <= int(raw) <= 599:
        raise AdminError(422, "status_code must be an HTTP status code (100-599)", "status_code")
    return int(raw)


async def _one(services: AdminServices, account: str, gateway: str, log_id: str) -> Any:
    await ensure_gateway(services, account, gateway)
    try:
        lid = uuid.UUID(log_id)
    except ValueError:
        raise not_found(f"log {log_id!r}") from None
    row = await log_store.one(services.db, account, gateway, lid)
    if row is None:
        raise not_found(f"log {log_id!r}")
    return row


@router.route("GET", "/accounts/{account}/gateways/{gateway}/logs/{log_id}", "One log")
async def get_log(request: Request, services: AdminServices, account: str, gateway: str, log_id: str) -> dict[str, Any]:
    return log_view(await _one(services, account, gateway, log_id))


@router.route("PATCH", "/accounts/{account}/gateways/{gateway}/logs/{log_id}", "Feedback on a log",
              body={"type": "object", "required": ["feedback"], "properties": {"feedback": {"enum": [1, -1]}}})
async def patch_log(request: Request, services: AdminServices,
                    account: str, gateway: str, log_id: str) -> dict[str, Any]:
    row = await _one(services, account, gateway, log_id)
    data = await json_body(request)
    if type(data.get("feedback")) is not int or data["feedback"] not in (1, -1):  # not True, not 1.0
        raise AdminError(422, "feedback must be 1 or -1", "feedback")
    await log_store.set_feedback(services.db, row["id"], data["feedback"])
    return log_view({**dict(row), "feedback": data["feedback"]})
