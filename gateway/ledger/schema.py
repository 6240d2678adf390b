"""Tables of the ledger, in schema `ledger` (TigerBeetle's model in Postgres, amounts in integer nano-USD).

- `accounts`: one row per ledger account. `code` says what it is: a tenant's `credits` (customer money, flagged
  `debits_must_not_exceed_credits`) and `receivable` (what a tenant owes: charges of the built-in payment method,
  usage billed past an exhausted hold), the platform's `funding` (money that came in through top-ups) and
  `usage` (revenue, sharded 16 ways so that concurrent tenants do not queue on one platform row). Counters are
  TigerBeetle's: posted and pending, debits and credits. A CHECK enforces the no-overdraft flag. The tenant's
  auto top-up and account spending limit settings live on its credits row, so the hot-path statement that
  locks the row reads them in the same step.
- `transfers`: immutable rows; the id (UUID) is the idempotency key. `kind` is single / pending (a hold) /
  post / void / expire; a resolution names its hold in `pending_id`, and a unique partial index on
  `pending_id` makes a hold resolve at most once. No foreign keys to account rows (they caused
  multixact contention under aborting holds).
- `open_holds`: the unresolved holds. Deleting a hold's row is how a resolver claims it (settlement and sweeper
  race on this row; the loser sees it gone), and the sweeper scans only this small table.
- `usage_hourly`: a tenant's unified-billing usage per hour, kept while the tenant has a spending limit.
- `auto_topups`: the auto top-up outbox; at most one pending row per tenant.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID

from gateway.schema import metadata

ACCOUNT_CODES = ("credits", "receivable", "funding", "usage")
TRANSFER_KINDS = ("single", "pending", "post", "void", "expire")
TRANSFER_CODES = ("topup", "auto_topup", "usage", "refund", "adjustment")
USAGE_SHARDS = 16

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("code", sa.Text, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),  # tenant id; '' for platform accounts
    sa.Column("shard", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Column("debits_posted", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("credits_posted", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("debits_pending", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("credits_pending", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("debits_must_not_exceed_credits", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("auto_topup_threshold", sa.BigInteger),
    sa.Column("auto_topup_amount", sa.BigInteger),
    sa.Column("spend_limit", sa.BigInteger),
    sa.Column("spend_limit_duration", sa.Text),
    sa.Column("spend_limit_strategy", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.UniqueConstraint("code", "owner", "shard"),
    sa.CheckConstraint(
        "NOT debits_must_not_exceed_credits OR debits_posted + debits_pending <= credits_posted",
        name="no_overdraft",
    ),
    sa.CheckConstraint(
        "debits_posted >= 0 AND credits_posted >= 0 AND debits_pending >= 0 AND credits_pending >= 0",
        name="counters_not_negative",
    ),
    sa.CheckConstraint(f"code IN {ACCOUNT_CODES!r}", name="code"),
    sa.CheckConstraint("(auto_topup_threshold IS NULL) = (auto_topup_amount IS NULL)", name="auto_topup_pair"),
    sa.CheckConstraint(
        "(spend_limit IS NULL) = (spend_limit_duration IS NULL) AND (spend_limit IS NULL) = (spend_limit_strategy IS NULL)"
        " AND spend_limit_duration IN ('daily', 'weekly', 'monthly') AND spend_limit_strategy IN ('fixed', 'rolling')",
        name="spend_limit",
    ),
    schema="ledger",
)

transfers = sa.Table(
    "transfers",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True),
    sa.Column("debit_account_id", sa.BigInteger, nullable=False),
    sa.Column("credit_account_id", sa.BigInteger, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("code", sa.Text, nullable=False),
    sa.Column("pending_id", UUID(as_uuid=True)),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("request_id", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.CheckConstraint("amount >= 0", name="amount_not_negative"),
    sa.CheckConstraint("debit_account_id <> credit_account_id", name="two_accounts"),
    sa.CheckConstraint(f"kind IN {TRANSFER_KINDS!r}", name="kind"),
    sa.CheckConstraint(f"code IN {TRANSFER_CODES!r}", name="code"),
    sa.CheckConstraint("(kind IN ('post', 'void', 'expire')) = (pending_id IS NOT NULL)", name="resolution_names_hold"),
    sa.CheckConstraint("(kind = 'pending') = (expires_at IS NOT NULL)", name="hold_expires"),
    sa.Index("ix_transfers_resolves_once", "pending_id", unique=True, postgresql_where=sa.text("pending_id IS NOT NULL")),
    sa.Index(None, "debit_account_id", "created_at"),
    sa.Index(None, "credit_account_id", "created_at"),
    schema="ledger",
)

open_holds = sa.Table(
    "open_holds",
    metadata,
    sa.Column("hold_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("debit_account_id", sa.BigInteger, nullable=False),
    sa.Column("credit_account_id", sa.BigInteger, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("request_id", sa.Text),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index(None, "expires_at"),
    schema="ledger",
)

usage_hourly = sa.Table(
    "usage_hourly",
    metadata,
    sa.Column("tenant", sa.Text, primary_key=True),
    sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("spent", sa.BigInteger, nullable=False),
    schema="ledger",
)

auto_topups = sa.Table(
    "auto_topups",
    metadata,
    sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
    sa.Column("tenant", sa.Text, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("state", sa.Text, nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("reference", sa.Text),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    sa.Column("posted_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint("state IN ('pending', 'posted', 'failed')", name="state"),
    sa.Index("ix_auto_topups_one_pending", "tenant", unique=True, postgresql_where=sa.text("state = 'pending'")),
    schema="ledger",
)
