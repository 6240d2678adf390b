"""Request logs and the reporting views over them (requests, spend_daily).

Revision ID: 0009_logs
Revises: 0008_providers
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

from gateway.db import run_script
from gateway.logs.schema import request_logs

revision = "0009_logs"
down_revision = "0008_providers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    request_logs.create(op.get_bind())
    run_script(
        """
        CREATE VIEW reporting.requests AS
        SELECT id, created_at AS time, account_id AS account, gateway_id AS gateway, provider, model,
               status_code AS status, success, tokens_in, tokens_out, tokens_cache_read, tokens_cache_write,
               cost_usd, billing_mode, identity->>'user_id' AS user_id, identity->>'email' AS email,
               identity->'groups' AS groups, identity->>'service_token' AS service_token, metadata
          FROM request_logs;

        CREATE VIEW reporting.spend_daily AS
        SELECT date_trunc('day', created_at AT TIME ZONE 'UTC')::date AS day, account_id AS account,
               gateway_id AS gateway, provider, model, identity->>'user_id' AS user_id,
               count(*) AS requests, coalesce(sum(tokens_in), 0) AS tokens_in,
               coalesce(sum(tokens_out), 0) AS tokens_out, sum(cost_usd) AS cost_usd
          FROM request_logs
         GROUP BY 1, 2, 3, 4, 5, 6;

        GRANT SELECT ON reporting.requests, reporting.spend_daily TO spendgate_reporting;
        """
    )


def downgrade() -> None:
    run_script("DROP VIEW reporting.spend_daily, reporting.requests")
    request_logs.drop(op.get_bind())
