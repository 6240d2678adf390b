"""Gateway tokens (cf-aig-authorization), stored as SHA-256 hashes.

Revision ID: 0010_gateway_tokens
Revises: 0009_logs
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

from gateway.db import run_script

revision = "0010_gateway_tokens"
down_revision = "0009_logs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_tokens",
        sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column("account_id", sa.Text, nullable=False),
        sa.Column("gateway_id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("token_sha256", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.ForeignKeyConstraint(["account_id", "gateway_id"], ["gateways.account_id", "gateways.id"],
                                ondelete="CASCADE", name="fk_gateway_tokens_gateway"),
    )
    run_script("CREATE TRIGGER gateway_tokens_notify AFTER INSERT OR UPDATE OR DELETE ON gateway_tokens "
               "FOR EACH STATEMENT EXECUTE FUNCTION notify_config_change()")


def downgrade() -> None:
    op.drop_table("gateway_tokens")
