"""Per-gateway provider configuration: stored keys (BYOK), custom OpenAI-compatible providers, price overrides.

Stored keys are secrets: no API returns them (only the last four characters) and no log contains them. They are
kept in this table, which the reporting role cannot read; encrypt the database volume at rest.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

from gateway.schema import metadata

_gateway_fk = ("account_id", "gateway_id"), ("gateways.account_id", "gateways.id")

provider_keys = sa.Table(
    "provider_keys",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("provider", sa.Text, nullable=False),
    sa.Column("alias", sa.Text, nullable=False, server_default="default"),
    sa.Column("secret", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.ForeignKeyConstraint(*_gateway_fk, ondelete="CASCADE"),
    sa.UniqueConstraint("account_id", "gateway_id", "provider", "alias"),
)

custom_providers = sa.Table(
    "custom_providers",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("gateway_id", sa.Text, primary_key=True),
    sa.Column("slug", sa.Text, primary_key=True),
    sa.Column("base_url", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.ForeignKeyConstraint(*_gateway_fk, ondelete="CASCADE"),
    sa.CheckConstraint("slug ~ '^[a-z0-9][a-z0-9-]{0,40}$'", name="slug_format"),
)

price_overrides = sa.Table(
    "price_overrides",
    metadata,
    sa.Column("account_id", sa.Text, primary_key=True),
    sa.Column("gateway_id", sa.Text, primary_key=True),
    sa.Column("provider", sa.Text, primary_key=True),
    sa.Column("model", sa.Text, primary_key=True),
    sa.Column("input_per_mtok", sa.Numeric, nullable=False),
    sa.Column("output_per_mtok", sa.Numeric, nullable=False),
    sa.Column("cache_read_per_mtok", sa.Numeric),
    sa.Column("cache_write_per_mtok", sa.Numeric),
    sa.Column("cache_write_1h_per_mtok", sa.Numeric),
    sa.Column("input_audio_per_mtok", sa.Numeric),
    sa.Column("output_audio_per_mtok", sa.Numeric),
    sa.Column("web_search_per_k", sa.Numeric),  # USD per 1,000 searches
    sa.ForeignKeyConstraint(*_gateway_fk, ondelete="CASCADE"),
)
