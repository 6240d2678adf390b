"""Price overrides for each billed component: 1-hour cache writes, audio in and out, web searches; and the log
row's full usage (the components beyond the four token columns).

Revision ID: 0014_component_prices
Revises: 0013_usage_estimated
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0014_component_prices"
down_revision = "0013_usage_estimated"
branch_labels = None
depends_on = None

COLUMNS = ("cache_write_1h_per_mtok", "input_audio_per_mtok", "output_audio_per_mtok", "web_search_per_k")


def upgrade() -> None:
    # IF NOT EXISTS: until the migrations were frozen, 0008 and 0009 built their tables from the code's definitions
    # of the day, so databases created from commit abf430b on already have the columns (0008 and 0009 themselves no
    # longer add them)
    for column in COLUMNS:
        op.execute(f"ALTER TABLE price_overrides ADD COLUMN IF NOT EXISTS {column} numeric")
    op.execute("ALTER TABLE request_logs ADD COLUMN IF NOT EXISTS usage_details jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE request_logs DROP COLUMN usage_details")
    for column in COLUMNS:
        op.execute(f"ALTER TABLE price_overrides DROP COLUMN {column}")
