"""The request log table. Costs are numeric USD (exact), null when the price is unknown."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from gateway.schema import metadata

request_logs = sa.Table(
    "request_logs",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("provider", sa.Text),
    sa.Column("model", sa.Text),
    sa.Column("path", sa.Text),
    sa.Column("status_code", sa.Integer),
    sa.Column("success", sa.Boolean, nullable=False),
    sa.Column("cached", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("step", sa.Integer, nullable=False, server_default="0"),
    sa.Column("duration_ms", sa.Numeric(12, 3)),
    sa.Column("ttfb_ms", sa.Numeric(12, 3)),
    sa.Column("tokens_in", sa.Integer),
    sa.Column("tokens_out", sa.Integer),
    sa.Column("tokens_cache_read", sa.Integer),
    sa.Column("tokens_cache_write", sa.Integer),
    sa.Column("cost_usd", sa.Numeric(20, 9)),
    sa.Column("custom_cost", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("billing_mode", sa.Text),
    sa.Column("zdr_applied", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("zdr_reason", sa.Text),
    sa.Column("identity", JSONB),
    sa.Column("metadata", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("request_size", sa.Integer),
    sa.Column("response_size", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("request_body", sa.Text),
    sa.Column("response_body", sa.Text),
    sa.Column("feedback", sa.SmallInteger),
    sa.Column("usage_estimated", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("usage_details", JSONB),  # the usage components beyond the four token columns
    # what the guardrails found, per side: {"prompt": {category: action}, "response": {...}}; never the text
    sa.Column("guardrails", JSONB),
    sa.CheckConstraint("feedback IN (-1, 1)", name="feedback"),
    sa.Index("ix_request_logs_gateway_time", "account_id", "gateway_id", sa.text("created_at DESC"), sa.text("id DESC")),
    sa.Index("ix_request_logs_metadata", "metadata", postgresql_using="gin"),
    # the partial hours at the edges of an analytics query are read from here (gateway/analytics/queries.py)
    sa.Index("ix_request_logs_created_at", "created_at", postgresql_using="brin"),
)

COLUMNS = [c.name for c in request_logs.columns if c.name != "feedback"]
