"""The analytics rollups, in schema `analytics` (migration 0025 creates them and the statement-level triggers on
`request_logs` that keep them, in the log statement's own transaction).

- `hourly`, `daily` and `weekly` (ISO weeks, from Monday 00:00 UTC): per account, bucket start and the common
  dimensions (gateway, provider, model, billing mode, status code, user id, email, groups as the sorted distinct
  names, service token), the sums of requests, errors and tokens and the cost in integer nano-USD (`cost_nano`: the log's cost has 9 decimals, so it is exact).
  `dims` is the md5 of the dimension values (as one row's text, where NULL and '' differ); (account_id, start,
  dims) is the key. Each row is its key's whole sum (a key left at zero requests is deleted).
- `hourly_metadata` and `daily_metadata`: per account, bucket start, gateway, client metadata key (not `cf.*`)
  and value (JSON null left out), the same sums; a request counts once under each of its keys. `dims` is the md5
  of (gateway_id, key, value).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from gateway.schema import metadata

DIMENSIONS = ("gateway_id", "provider", "model", "billing_mode", "status_code", "user_id", "email", "groups",
              "service_token")
SUMS = ("requests", "errors", "tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write", "cost_nano")


def _key() -> list[sa.Column[Any]]:
    return [
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("dims", UUID(as_uuid=True), nullable=False),
        sa.Column("gateway_id", sa.Text, nullable=False),
    ]


def _sums() -> list[sa.Column[Any]]:
    return [sa.Column(name, sa.BigInteger, nullable=False) for name in SUMS]


def _dimensions() -> list[sa.Column[Any]]:
    return [
        sa.Column("provider", sa.Text),
        sa.Column("model", sa.Text),
        sa.Column("billing_mode", sa.Text),
        sa.Column("status_code", sa.Integer),
        sa.Column("user_id", sa.Text),
        sa.Column("email", sa.Text),
        sa.Column("groups", ARRAY(sa.Text)),
        sa.Column("service_token", sa.Text),
    ]


def _metadata_columns() -> list[sa.Column[Any]]:
    return [sa.Column("key", sa.Text, nullable=False), sa.Column("value", JSONB, nullable=False)]


def _table(name: str, columns: list[sa.Column[Any]]) -> sa.Table:
    return sa.Table(name, metadata, *_key(), *columns, *_sums(),
                    sa.PrimaryKeyConstraint("account_id", "start", "dims", name=f"pk_{name}"),
                    schema="analytics", postgresql_with={"fillfactor": 80})


hourly = _table("hourly", _dimensions())
daily = _table("daily", _dimensions())
weekly = _table("weekly", _dimensions())
hourly_metadata = _table("hourly_metadata", _metadata_columns())
daily_metadata = _table("daily_metadata", _metadata_columns())
