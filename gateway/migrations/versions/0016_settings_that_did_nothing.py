"""Gateway settings `cache_ttl` and `rate_limit` are retired: they were stored and validated but nothing applied
them, so a gateway configured with them promised what it did not do. Stored settings lose both keys; the admin API
now refuses them as unknown settings. (A response cache and rate limits that work will come with their own
settings.)

Revision ID: 0016_settings_that_did_nothing
Revises: 0015_rolling_spending_limit
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0016_settings_that_did_nothing"
down_revision = "0015_rolling_spending_limit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE gateways SET settings = settings - 'cache_ttl' - 'rate_limit' "
               "WHERE settings ? 'cache_ttl' OR settings ? 'rate_limit'")


def downgrade() -> None:
    # The previous code reads a missing key as its default (null), which is all these keys ever held in effect.
    pass
