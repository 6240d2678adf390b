"""Spend limits: rules, buckets, reservations, alerts; the one-round-trip reserve and settle functions.

Revision ID: 0005_limits
Revises: 0001_base
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

from gateway.db import run_script
from gateway.limits.schema import alerts, buckets, policies, reservations, rules
from gateway.limits.sql import RESERVE, SETTLE

revision = "0005_limits"
down_revision = "0001_base"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("CREATE SCHEMA IF NOT EXISTS limits")
    for table in (rules, policies, buckets, reservations, alerts):
        table.create(op.get_bind())
    run_script(
        """
        CREATE TRIGGER rules_notify AFTER INSERT OR UPDATE OR DELETE ON limits.rules
            FOR EACH STATEMENT EXECUTE FUNCTION notify_config_change();
        CREATE TRIGGER policies_notify AFTER INSERT OR UPDATE OR DELETE ON limits.policies
            FOR EACH STATEMENT EXECUTE FUNCTION notify_config_change();
        """
    )
    run_script(RESERVE)
    run_script(SETTLE)


def downgrade() -> None:
    run_script("DROP SCHEMA limits CASCADE")
