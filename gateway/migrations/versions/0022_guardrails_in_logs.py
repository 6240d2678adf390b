"""request_logs.guardrails: what the gateway's guardrails found in a request, per side, and the action applied to
each category (`{"prompt": {"pii.email": "redact"}, "response": {"secret.aws": "block"}}`); null when they found
nothing or were off. Never the matched text.

Revision ID: 0022_guardrails_in_logs
Revises: 0021_analytics_rollups
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0022_guardrails_in_logs"
down_revision = "0021_analytics_rollups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE request_logs ADD COLUMN guardrails jsonb")


def downgrade() -> None:
    op.execute("ALTER TABLE request_logs DROP COLUMN guardrails")
