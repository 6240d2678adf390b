"""limits.settle records a settlement that arrives after its reservation expired (outcome 'late').

Revision ID: 0011_late_settlement
Revises: 0010_gateway_tokens
Create Date: 2026-12-01
"""

from __future__ import annotations

from gateway.db import run_script
from gateway.limits.sql import SETTLE

revision = "0011_late_settlement"
down_revision = "0010_gateway_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(SETTLE)  # CREATE OR REPLACE


def downgrade() -> None:
    pass  # the earlier function refused late settlements; keeping the newer one is harmless
