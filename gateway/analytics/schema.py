"""The analytics rollups, in schema `analytics` (migration 0021 creates them and the triggers that keep them).

- `hourly`: per account, hour and dimension values, the sums of requests, errors, tokens and cost. Rows with
  `merged` false are deltas the triggers on `request_logs` wrote in the same transaction as the log rows (one per
  inserted row; one per hour and dimension values a DELETE or UPDATE changed, negative for what left); the
  compaction (gateway/analytics/store.py) folds them into one merged row per key.
- `daily`: the same per day, holding exactly the compacted hours; the deltas not compacted yet are read beside it.
- `dims` is the md5 of the dimension values (as one row's text, where NULL and '' differ): the key of a merged row.
- `metadata` holds the client's metadata only; the identity fields have their own columns.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from gateway.schema import metadata

DIMENSIONS = ("gateway_id", "provider", "model", "billing_mode", "status_code", "user_id", "email", "groups",
              "service_token", "metadata")
SUMS = ("requests", "errors", "tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write", "cost_usd")


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dims", UUID(as_uuid=True), nullable=False),
        sa.Column("gateway_id", sa.Text, nullable=False),
        sa.Column("provider", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("billing_mode", sa.Text),
        sa.Column("status_code", sa.Integer),
        sa.Column("user_id", sa.Text),
        sa.Column("email", sa.Text),
        sa.Column("groups", JSONB),
        sa.Column("service_token", sa.Text),
        sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in SUMS[:-1]),
        sa.Column("cost_usd", sa.Numeric, nullable=False),
    ]


hourly = sa.Table(
    "hourly",
    metadata,
    *_columns(),
    sa.Column("merged", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_hourly_account_id_start", "account_id", "start"),
    sa.Index("ix_hourly_merged_key", "account_id", "start", "dims", unique=True, postgresql_where=sa.text("merged")),
    sa.Index("ix_hourly_deltas", "start", postgresql_where=sa.text("NOT merged")),
    schema="analytics",
)

daily = sa.Table(
    "daily",
    metadata,
    *_columns(),
    sa.PrimaryKeyConstraint("account_id", "start", "dims", name="pk_daily"),
    schema="analytics",
)
