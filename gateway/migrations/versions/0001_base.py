"""Base: tenant accounts, gateways, the admin token; the config-change notification.

Revision ID: 0001_base
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0001_base"
down_revision = None
branch_labels = None
depends_on = None

# Frozen: the tables exactly as this migration installed them when it landed (commit c726834),
# spelled out rather than imported, so that no later change to the code changes what it installs.
TABLES = """
CREATE TABLE accounts (
    id TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    CONSTRAINT pk_accounts PRIMARY KEY (id),
    CONSTRAINT ck_accounts_id_format CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$')
);

CREATE TABLE gateways (
    account_id TEXT NOT NULL,
    id TEXT NOT NULL,
    settings JSONB DEFAULT '{}'::jsonb NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    updated_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    CONSTRAINT pk_gateways PRIMARY KEY (account_id, id),
    CONSTRAINT ck_gateways_id_format CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    CONSTRAINT fk_gateways_account_id_accounts FOREIGN KEY(account_id) REFERENCES accounts (id) ON DELETE CASCADE
);

CREATE TABLE admin_tokens (
    id SMALLSERIAL NOT NULL,
    token_sha256 TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    CONSTRAINT pk_admin_tokens PRIMARY KEY (id),
    CONSTRAINT ck_admin_tokens_single_row CHECK (id = 1)
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
    # Every instance caches gateway config; a change notifies them all (LISTEN spendgate_config).
    run_script(
        """
        CREATE FUNCTION notify_config_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('spendgate_config', TG_TABLE_NAME);
            RETURN NULL;
        END $$;
        CREATE TRIGGER gateways_notify AFTER INSERT OR UPDATE OR DELETE ON gateways
            FOR EACH STATEMENT EXECUTE FUNCTION notify_config_change();
        """
    )


def downgrade() -> None:
    run_script("DROP TRIGGER gateways_notify ON gateways; DROP FUNCTION notify_config_change()")
    run_script("DROP TABLE admin_tokens, gateways, accounts")
