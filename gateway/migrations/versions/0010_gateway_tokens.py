"""Gateway tokens (cf-aig-authorization), stored as SHA-256 hashes.

Revision ID: 0010_gateway_tokens
Revises: 0009_logs
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0010_gateway_tokens"
down_revision = "0009_logs"
branch_labels = None
depends_on = None

# Frozen: the table exactly as this migration installed it when it landed (commit 0457e4f), spelled out rather than
# built with op.create_table, whose unnamed constraints took their names from the naming convention of whatever
# metadata env.py was handed at the time (pk_gateway_tokens, uq_gateway_tokens_token_sha256).
TABLE = """
CREATE TABLE gateway_tokens (
    id UUID DEFAULT gen_random_uuid() NOT NULL,
    account_id TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    name TEXT NOT NULL,
    token_sha256 TEXT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    CONSTRAINT pk_gateway_tokens PRIMARY KEY (id),
    CONSTRAINT fk_gateway_tokens_gateway FOREIGN KEY(account_id, gateway_id) REFERENCES gateways (account_id, id) ON DELETE CASCADE,
    CONSTRAINT uq_gateway_tokens_token_sha256 UNIQUE (token_sha256)
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
    run_script(TABLE)
    run_script("CREATE TRIGGER gateway_tokens_notify AFTER INSERT OR UPDATE OR DELETE ON gateway_tokens "
               "FOR EACH STATEMENT EXECUTE FUNCTION notify_config_change()")


def downgrade() -> None:
    run_script("DROP TABLE gateway_tokens")
