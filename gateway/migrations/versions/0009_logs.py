"""Request logs and the reporting views over them (requests, spend_daily).

Revision ID: 0009_logs
Revises: 0008_providers
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0009_logs"
down_revision = "0008_providers"
branch_labels = None
depends_on = None

# Frozen: the table exactly as this migration installed it when it landed (commit 23b88fa),
# spelled out rather than imported, so that no later change to the code changes what it installs.
TABLE = """
CREATE TABLE request_logs (
    id UUID NOT NULL,
    account_id TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    provider TEXT,
    model TEXT,
    path TEXT,
    status_code INTEGER,
    success BOOLEAN NOT NULL,
    cached BOOLEAN DEFAULT false NOT NULL,
    step INTEGER DEFAULT '0' NOT NULL,
    duration_ms NUMERIC(12, 3),
    ttfb_ms NUMERIC(12, 3),
    tokens_in INTEGER,
    tokens_out INTEGER,
    tokens_cache_read INTEGER,
    tokens_cache_write INTEGER,
    cost_usd NUMERIC(20, 9),
    custom_cost BOOLEAN DEFAULT false NOT NULL,
    billing_mode TEXT,
    zdr_applied BOOLEAN DEFAULT false NOT NULL,
    zdr_reason TEXT,
    identity JSONB,
    metadata JSONB DEFAULT '{}'::jsonb NOT NULL,
    request_size INTEGER,
    response_size INTEGER,
    error TEXT,
    request_body TEXT,
    response_body TEXT,
    feedback SMALLINT,
    CONSTRAINT pk_request_logs PRIMARY KEY (id),
    CONSTRAINT ck_request_logs_feedback CHECK (feedback IN (-1, 1))
);
CREATE INDEX ix_request_logs_gateway_time ON request_logs (account_id, gateway_id, created_at DESC, id DESC);
CREATE INDEX ix_request_logs_metadata ON request_logs USING gin (metadata);
"""


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script(TABLE)
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
    run_script("DROP VIEW reporting.spend_daily, reporting.requests; DROP TABLE request_logs")
