"""Tables of the spend limits, in schema `limits`.

- `rules`: a gateway's rules as validated JSON (`spec`), at most 20 per gateway.
- `buckets`: one row per (rule, bucket key, window start). A fixed window's row holds `spent` and `pending`.
  A rolling bucket has a head row at `window_start = -infinity` that holds `pending` (and is the row locked to
  serialise reservations) and one row per slice holding `spent`.
- `reservations`: what a request reserved, in which buckets, until it is settled exactly once.
- `policies`: group -> allowed model patterns, per gateway.
- `alerts`: one row per (bucket, window, fraction) crossed, and per (bucket, window) the forecast said runs out;
  `delivered_at` NULL means the webhook outbox still owes it.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

from gateway.schema import metadata

rules = sa.Table(
    "rules",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("spec", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.ForeignKeyConstraint(["account_id", "gateway_id"], ["gateways.account_id", "gateways.id"], ondelete="CASCADE"),
    sa.Index(None, "account_id", "gateway_id"),
    schema="limits",
)

buckets = sa.Table(
    "buckets",
    metadata,
    sa.Column("rule_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("window_start", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("spent", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("pending", sa.BigInteger, nullable=False, server_default="0"),
    sa.CheckConstraint("spent >= 0", name="spent_not_negative"),
    sa.CheckConstraint("pending >= 0", name="pending_not_negative"),
    schema="limits",
)

reservations = sa.Table(
    "reservations",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("lines", JSONB, nullable=False),
    sa.Column("estimate", sa.BigInteger, nullable=False),
    sa.Column("tokens", sa.BigInteger),  # the token bound its rate-limit lines counting tokens took (migration 0024)
    sa.Column("hold_id", UUID(as_uuid=True)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("settled_at", sa.DateTime(timezone=True)),
    sa.Column("actual", sa.BigInteger),
    sa.Column("outcome", sa.Text),
    sa.Index("ix_reservations_open", "expires_at", postgresql_where=sa.text("settled_at IS NULL")),
    schema="limits",
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("rule_id", UUID(as_uuid=True), nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("fraction", sa.Numeric, nullable=False),
    sa.Column("spent", sa.BigInteger, nullable=False),
    sa.Column("budget", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    # `forecast`: the forecast said the bucket runs out before its window ends (recorded at fraction 0, which no
    # alert_at fraction can be: the unique key then holds one per bucket and window); `exhausted_at` is when
    sa.Column("kind", sa.Text, nullable=False, server_default="fraction"),
    sa.Column("exhausted_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("kind IN ('fraction', 'forecast')", name="kind"),
    sa.UniqueConstraint("rule_id", "key", "window_start", "fraction"),
    sa.Index("ix_alerts_outbox", "next_attempt_at", postgresql_where=sa.text("delivered_at IS NULL")),
    schema="limits",
)

policies = sa.Table(
    "policies",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("group", sa.Text, nullable=False),
    sa.Column("models", sa.ARRAY(sa.Text), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.ForeignKeyConstraint(["account_id", "gateway_id"], ["gateways.account_id", "gateways.id"], ondelete="CASCADE"),
    sa.Index(None, "account_id", "gateway_id"),
    schema="limits",
)
