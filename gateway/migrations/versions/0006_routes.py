"""Dynamic routes and their versions.

Revision ID: 0006_routes
Revises: 0005_limits
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0006_routes"
down_revision = "0005_limits"
branch_labels = None
depends_on = None


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script(
        """
        CREATE TABLE routes (
            id bigint GENERATED ALWAYS AS IDENTITY CONSTRAINT pk_routes PRIMARY KEY,
            account_id text NOT NULL,
            gateway_id text NOT NULL,
            name text NOT NULL,
            deployed_version integer NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT fk_routes_gateway FOREIGN KEY (account_id, gateway_id)
                REFERENCES gateways (account_id, id) ON DELETE CASCADE,
            CONSTRAINT uq_routes_name UNIQUE (account_id, gateway_id, name)
        );
        CREATE TABLE route_versions (
            route_id bigint NOT NULL REFERENCES routes (id) ON DELETE CASCADE,
            version integer NOT NULL,
            graph jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_route_versions PRIMARY KEY (route_id, version)
        );
        CREATE TRIGGER routes_notify AFTER INSERT OR UPDATE OR DELETE ON routes
            FOR EACH STATEMENT EXECUTE FUNCTION notify_config_change();
        """
    )


def downgrade() -> None:
    run_script("DROP TABLE route_versions; DROP TABLE routes;")
