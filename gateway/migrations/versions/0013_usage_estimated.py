"""request_logs.usage_estimated: the row's usage was estimated by the gateway (the client left before the provider
reported it), and reporting.requests shows it.

Revision ID: 0013_usage_estimated
Revises: 0012_limits_batched
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0013_usage_estimated"
down_revision = "0012_limits_batched"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # IF NOT EXISTS: until the migrations were frozen, 0009 built the table from the code's definition of the day,
    # so databases created from commit 9e162a8 on already have the column (0009 itself no longer adds it)
    op.execute("ALTER TABLE request_logs ADD COLUMN IF NOT EXISTS usage_estimated boolean NOT NULL DEFAULT false")
    op.execute(
        """
        CREATE OR REPLACE VIEW reporting.requests AS
        SELECT id, created_at AS time, account_id AS account, gateway_id AS gateway, provider, model,
               status_code AS status, success, tokens_in, tokens_out, tokens_cache_read, tokens_cache_write,
               cost_usd, billing_mode, identity->>'user_id' AS user_id, identity->>'email' AS email,
               identity->'groups' AS groups, identity->>'service_token' AS service_token, metadata,
               usage_estimated
          FROM request_logs
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW reporting.requests")  # a view cannot lose a column by CREATE OR REPLACE
    op.execute(
        """
        CREATE VIEW reporting.requests AS
        SELECT id, created_at AS time, account_id AS account, gateway_id AS gateway, provider, model,
               status_code AS status, success, tokens_in, tokens_out, tokens_cache_read, tokens_cache_write,
               cost_usd, billing_mode, identity->>'user_id' AS user_id, identity->>'email' AS email,
               identity->'groups' AS groups, identity->>'service_token' AS service_token, metadata
          FROM request_logs
        """
    )
    op.execute("GRANT SELECT ON reporting.requests TO spendgate_reporting")  # one statement per op.execute
    op.execute("ALTER TABLE request_logs DROP COLUMN usage_estimated")
