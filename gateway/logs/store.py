"""Reading the request logs back (the writer, gateway/logs/writer.py, is the only other code on `request_logs`):
a filtered page, newest first, one row, and the feedback a person gives on one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.db import Database

FIELDS = ("id, created_at, gateway_id, provider, model, path, status_code, success, cached, step, duration_ms, "
          "ttfb_ms, tokens_in, tokens_out, tokens_cache_read, tokens_cache_write, cost_usd, custom_cost, "
          "billing_mode, zdr_applied, zdr_reason, identity, metadata, request_size, response_size, error, "
          "request_body, response_body, feedback, guardrails")

IDENTITY_FIELDS = ("user_id", "email", "service_token")


@dataclass
class LogQuery:
    """Filters already validated by the caller; None means "any"."""

    account: str
    gateway: str
    provider: str | None = None
    model: str | None = None
    status_code: int | None = None
    success: bool | None = None
    start: datetime | None = None
    end: datetime | None = None
    identity: dict[str, str] = field(default_factory=dict)  # user_id / email / service_token -> value
    group: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # metadata key (cf.* included) -> value
    guardrail: str | None = None  # a category a guardrail found, in the prompt or the response
    cached: bool | None = None  # answered from the response cache, or not
    after: tuple[datetime, uuid.UUID] | None = None  # the (created_at, id) of the last row of the previous page
    limit: int = 100


async def search(db: Database, q: LogQuery) -> list[Any]:
    """Rows matching `q`, newest first, at most `q.limit`."""
    where = ["account_id = $1", "gateway_id = $2"]
    args: list[Any] = [q.account, q.gateway]

    def add(clause: str, value: Any) -> None:
        args.append(value)
        where.append(clause.replace("?", f"${len(args)}"))

    if q.provider is not None:
        add("provider = ?", q.provider)
    if q.model is not None:
        add("model = ?", q.model)
    if q.status_code is not None:
        add("status_code = ?", q.status_code)
    if q.success is not None:
        add("success = ?", q.success)
    if q.start is not None:
        add("created_at >= ?", q.start)
    if q.end is not None:
        add("created_at < ?", q.end)
    for name, value in q.identity.items():
        if name not in IDENTITY_FIELDS:
            raise ValueError(f"unknown identity field {name!r}")
        add(f"identity->>'{name}' = ?", value)
    if q.group is not None:
        # jsonb_exists is the `?` operator; spelled out so it is not mistaken for a placeholder
        add("jsonb_exists(identity->'groups', ?)", q.group)
    for key, value in q.metadata.items():
        args.append(key)
        add(f"metadata->>${len(args)}::text = ?", value)
    if q.guardrail is not None:
        add("(jsonb_exists(guardrails->'prompt', ?) OR jsonb_exists(guardrails->'response', ?))", q.guardrail)
    if q.cached is not None:
        add("cached = ?", q.cached)
    if q.after is not None:
        args += list(q.after)
        where.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(q.limit)
    return await db.pool.fetch(  # type: ignore[no-any-return]
        f"SELECT {FIELDS} FROM request_logs WHERE {' AND '.join(where)} "
        f"ORDER BY created_at DESC, id DESC LIMIT ${len(args)}", *args)


async def one(db: Database, account: str, gateway: str, log_id: uuid.UUID) -> Any:
    return await db.pool.fetchrow(
        f"SELECT {FIELDS} FROM request_logs WHERE account_id = $1 AND gateway_id = $2 AND id = $3",
        account, gateway, log_id)


async def set_feedback(db: Database, log_id: uuid.UUID, feedback: int) -> None:
    await db.pool.execute("UPDATE request_logs SET feedback = $2 WHERE id = $1", log_id, feedback)
