"""Tables shared by every part of the gateway, in SQLAlchemy Core.

Migrations are the schema's only author; these definitions name the tables for Core queries and give
constraints stable names through the naming convention. They describe every table the migrations create, and
`alembic check` holds them to a migrated database (tests/migrations). Each part keeps its own tables beside its code
(`gateway/ledger/schema.py`, ...) on this same `metadata`.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# A tenant: the `{account}` of /v1/{account}/{gateway}/... . Its ledger accounts live in ledger.accounts.
accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'", name="id_format"),
)

# A gateway of a tenant; its settings are a JSON object read through gateway.gateways.GatewaySettings.
gateways = sa.Table(
    "gateways",
    metadata,
    sa.Column("account_id", sa.Text, sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("settings", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'", name="id_format"),
)

# The admin API's bearer token, stored as a SHA-256 hash (generated on first start when unset).
admin_tokens = sa.Table(
    "admin_tokens",
    metadata,
    sa.Column("id", sa.SmallInteger, primary_key=True),
    sa.Column("token_sha256", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("id = 1", name="single_row"),
)

# A gateway's tokens (cf-aig-authorization and the sgk_ keys), stored as SHA-256 hashes.
gateway_tokens = sa.Table(
    "gateway_tokens",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("token_sha256", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.ForeignKeyConstraint(["account_id", "gateway_id"], ["gateways.account_id", "gateways.id"], ondelete="CASCADE",
                            name="fk_gateway_tokens_gateway"),
)

# Each part defines its tables on `metadata` when its schema module is imported.
PARTS = ("gateway.analytics.schema", "gateway.cache.schema", "gateway.ledger.schema", "gateway.limits.schema",
         "gateway.logs.schema", "gateway.providers.schema", "gateway.routes.schema")


def complete_metadata() -> sa.MetaData:
    """`metadata` with every part's tables: what the migrated database must match (`alembic check`)."""
    import importlib

    for name in PARTS:
        importlib.import_module(name)
    return metadata
