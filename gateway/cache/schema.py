"""Tables of the response cache, in schema `cache` (migration 0020_response_cache says what each column and
function does; gateway/cache/store.py is the one module that reads and writes them)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, UUID

from gateway.schema import metadata

_gateway_fk = ("account_id", "gateway_id"), ("gateways.account_id", "gateways.id")

entries = sa.Table(
    "entries",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("gateway_id", sa.Text, primary_key=True),
    sa.Column("key", BYTEA, primary_key=True),
    sa.Column("ready", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("fill_id", UUID(as_uuid=True)),
    sa.Column("status", sa.Integer),
    sa.Column("headers", JSONB),
    sa.Column("body", BYTEA),
    sa.Column("size", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cost_nano", sa.BigInteger),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(*_gateway_fk, ondelete="CASCADE"),
    sa.CheckConstraint("size >= 0", name="size_not_negative"),
    sa.CheckConstraint("NOT ready OR (status IS NOT NULL AND body IS NOT NULL)", name="ready_has_answer"),
    sa.Index("ix_entries_expires_at", "expires_at"),
    sa.Index("ix_entries_oldest", "account_id", "gateway_id", "created_at"),
    schema="cache",
)

usage = sa.Table(
    "usage",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("gateway_id", sa.Text, primary_key=True),
    sa.Column("bytes", sa.BigInteger, nullable=False, server_default="0"),
    sa.ForeignKeyConstraint(*_gateway_fk, ondelete="CASCADE"),
    schema="cache",
)
