"""Base: tenant accounts, gateways, the admin token; the config-change notification.

Revision ID: 0001_base
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

from gateway.db import run_script
from gateway.schema import accounts, admin_tokens, gateways

revision = "0001_base"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in (accounts, gateways, admin_tokens):
        table.create(op.get_bind())
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
    for table in (admin_tokens, gateways, accounts):
        table.drop(op.get_bind())
