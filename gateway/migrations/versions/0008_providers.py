"""Provider configuration per gateway: stored keys, custom providers, price overrides.

Revision ID: 0008_providers
Revises: 0007_billing
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

from gateway.db import run_script
from gateway.providers.schema import custom_providers, price_overrides, provider_keys

revision = "0008_providers"
down_revision = "0007_billing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in (provider_keys, custom_providers, price_overrides):
        table.create(op.get_bind())
        run_script(
            f"CREATE TRIGGER {table.name}_notify AFTER INSERT OR UPDATE OR DELETE ON {table.name} "
            "FOR EACH STATEMENT EXECUTE FUNCTION notify_config_change()"
        )


def downgrade() -> None:
    for table in (price_overrides, custom_providers, provider_keys):
        table.drop(op.get_bind())
