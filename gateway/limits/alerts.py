"""Budget alerts: the outbox of `limits.alerts`, delivered to each gateway's `alert_webhook`.

`limits.settle` records one row per bucket, fraction and window when spend crosses an `alert_at` fraction; the
forecast worker (gateway/analytics/budgets.py) one per bucket and window when a rule's `alert_at` has "forecast"
and the forecast first says the bucket runs out before its window ends (`type` `spend_limit.forecast`, with
`exhausted_at`).
`AlertDelivery.deliver_due` leases due rows (`FOR UPDATE SKIP LOCKED`, so several instances never take the
same row), POSTs each to its gateway's webhook, and marks it delivered; a failure retries with exponential
backoff (5 s, 10 s, 20 s, … capped at 10 min) up to `max_attempts`. Because rows live in Postgres, delivery
survives a restart. Delivery is at-least-once across crashes; the payload's `id` lets a receiver drop a repeat.
An alert of a gateway without a webhook is recorded and marked delivered without a call.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import httpx

from gateway.db import Database
from gateway.money import usd_str

log = logging.getLogger("spendgate.alerts")

LEASE = timedelta(seconds=60)


def backoff(attempts: int) -> timedelta:
    return min(timedelta(seconds=5 * 2 ** max(attempts - 1, 0)), timedelta(minutes=10))


class AlertDelivery:
    def __init__(self, db: Database, client: httpx.AsyncClient, *, max_attempts: int = 10) -> None:
        self.db = db
        self.client = client
        self.max_attempts = max_attempts

    async def deliver_due(self, limit: int = 50) -> int:
        rows = await self.db.pool.fetch(
            """
            UPDATE limits.alerts a SET next_attempt_at = now() + $2::interval, attempts = a.attempts + 1
             WHERE a.id IN (SELECT id FROM limits.alerts
                             WHERE delivered_at IS NULL AND next_attempt_at <= now() AND attempts < $3
                             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
            RETURNING a.id, a.rule_id, a.key, a.window_start, a.fraction, a.spent, a.budget, a.attempts, a.created_at,
                      a.kind, a.exhausted_at,
                      (SELECT r.spec->>'name' FROM limits.rules r WHERE r.id = a.rule_id) AS rule_name,
                      (SELECT r.account_id FROM limits.rules r WHERE r.id = a.rule_id) AS account,
                      (SELECT r.gateway_id FROM limits.rules r WHERE r.id = a.rule_id) AS gateway,
                      (SELECT g.settings->>'alert_webhook' FROM limits.rules r
                         JOIN gateways g ON g.account_id = r.account_id AND g.id = r.gateway_id
                        WHERE r.id = a.rule_id) AS webhook
            """,
            limit, LEASE, self.max_attempts,
        )
        delivered = 0
        for row in rows:
            ok = True
            if row["webhook"]:
                ok = await self._post(row["webhook"], self.payload(row))
            if ok:
                await self.db.pool.execute("UPDATE limits.alerts SET delivered_at = now() WHERE id = $1", row["id"])
                delivered += 1
            else:
                await self.db.pool.execute(
                    "UPDATE limits.alerts SET next_attempt_at = now() + $2::interval WHERE id = $1",
                    row["id"], backoff(row["attempts"]),
                )
        return delivered

    @staticmethod
    def payload(row: Any) -> dict[str, Any]:
        forecast = row["kind"] == "forecast"
        extra = {"exhausted_at": row["exhausted_at"].isoformat()} if forecast else {}
        return {
            "id": row["id"],
            "type": "spend_limit.forecast" if forecast else "spend_limit.alert",
            "account": row["account"],
            "gateway": row["gateway"],
            "rule": {"id": str(row["rule_id"]), "name": row["rule_name"]},
            "bucket": row["key"],
            "window_start": row["window_start"].isoformat(),
            "fraction": str(row["fraction"]),
            "spent_usd": usd_str(row["spent"]),
            "limit_usd": usd_str(row["budget"]),
            "created_at": row["created_at"].isoformat(),
            **extra,
        }

    async def _post(self, url: str, payload: dict[str, Any]) -> bool:
        try:
            response = await self.client.post(url, json=payload, timeout=10)
        except httpx.HTTPError as exc:
            log.warning("alert webhook unreachable: %s", type(exc).__name__)
            return False
        if response.status_code >= 300:
            log.warning("alert webhook answered %s", response.status_code)
            return False
        return True
