"""Tables of the dynamic routes: `routes` (one deployed version each) and `route_versions` (every saved graph)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import conv

from gateway.schema import metadata

routes = sa.Table(
    "routes",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("account_id", sa.Text, nullable=False),
    sa.Column("gateway_id", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("deployed_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.ForeignKeyConstraint(["account_id", "gateway_id"], ["gateways.account_id", "gateways.id"], ondelete="CASCADE",
                            name="fk_routes_gateway"),
    sa.UniqueConstraint("account_id", "gateway_id", "name", name="uq_routes_name"),
)

route_versions = sa.Table(
    "route_versions",
    metadata,
    # the constraint's name is Postgres's own: the migration left it unnamed
    sa.Column("route_id", sa.BigInteger, sa.ForeignKey("routes.id", ondelete="CASCADE",
                                                        name=conv("route_versions_route_id_fkey")), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("graph", JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)
