"""Provider configuration per gateway: stored keys, custom providers, price overrides.

Revision ID: 0008_providers
Revises: 0007_billing
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0008_providers"
down_revision = "0007_billing"
branch_labels = None
depends_on = None

# Frozen: the tables exactly as this migration installed them when it landed (commit 25dc0c2),
# spelled out rather than imported, so that no later change to the code changes what it installs.
TABLES = """
CREATE TABLE provider_keys (
    id UUID DEFAULT gen_random_uuid() NOT NULL,
    account_id TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    alias TEXT DEFAULT 'default' NOT NULL,
    secret TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    CONSTRAINT pk_provider_keys PRIMARY KEY (id),
    CONSTRAINT fk_provider_keys_account_id_gateways FOREIGN KEY(account_id, gateway_id) REFERENCES gateways (account_id, id) ON DELETE CASCADE,
    CONSTRAINT uq_provider_keys_account_id_gateway_id_provider_alias UNIQUE (account_id, gateway_id, provider, alias)
);

CREATE TABLE custom_providers (
    account_id TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    slug TEXT NOT NULL,
    base_url TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    CONSTRAINT pk_custom_providers PRIMARY KEY (account_id, gateway_id, slug),
    CONSTRAINT fk_custom_providers_account_id_gateways FOREIGN KEY(account_id, gateway_id) REFERENCES gateways (account_id, id) ON DELETE CASCADE,
    CONSTRAINT ck_custom_providers_slug_format CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,40}$')
);

CREATE TABLE price_overrides (
    account_id TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    input_per_mtok NUMERIC NOT NULL,
    output_per_mtok NUMERIC NOT NULL,
    cache_read_per_mtok NUMERIC,
    cache_write_per_mtok NUMERIC,
    CONSTRAINT pk_price_overrides PRIMARY KEY (account_id, gateway_id, provider, model),
    CONSTRAINT fk_price_overrides_account_id_gateways FOREIGN KEY(account_id, gateway_id) REFERENCES gateways (account_id, id) ON DELETE CASCADE
);
"""


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script(TABLES)
    for table in ("provider_keys", "custom_providers", "price_overrides"):
        run_script(
            f"CREATE TRIGGER {table}_notify AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION notify_config_change()"
        )


def downgrade() -> None:
    run_script("DROP TABLE price_overrides, custom_providers, provider_keys")
