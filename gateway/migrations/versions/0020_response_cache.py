"""The response cache: schema `cache`, shared by every instance.

- `cache.entries`: one row per (account, gateway, key). `key` is the SHA-256 of the canonical call (and of the
  caller's identity when the gateway scopes its cache by identity). A row is either being filled (`ready` false:
  one instance claimed it with `fill_id` and is calling the provider; `expires_at` is the end of that claim) or
  ready (an answer: `status`, the replayed `headers`, `body`, the original call's `cost_nano`; `expires_at` is
  the end of its TTL). `size` is what the row counts against the gateway's bound. Deleting a gateway deletes its
  entries.
- `cache.usage`: bytes held per gateway, kept by statement triggers on `cache.entries` (every insert, update and
  delete, cascades included), so that the size bound is checked without summing the entries.
- `cache.fill(...)`: store an answer in a row this instance claimed (nothing when the claim was lost: purged,
  or expired and claimed by another instance), then evict the gateway's oldest ready entries until its bytes are
  within `p_max_bytes`. Returns the number of entries evicted, or -1 when the claim was lost.
- `ledger.bill_cache_hit(...)`: the charge of a cache hit on unified billing (`cache_hit_charge`), posted as usage
  without a hold, as `ledger.bill_unheld` posts any usage no hold covers (from the credits while they cover it,
  else to the tenant's receivable account), and counted in the account's spending-limit slices like settled usage.
  One transfer per request: its id derives from the request id, so a repeat posts nothing.

Revision ID: 0020_response_cache
Revises: 0019_credit_holds_in_the_batch
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0020_response_cache"
down_revision = "0019_credit_holds_in_the_batch"
branch_labels = None
depends_on = None

SCHEMA = r"""
CREATE SCHEMA cache;

CREATE TABLE cache.entries (
    account_id TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    key BYTEA NOT NULL,
    ready BOOLEAN DEFAULT false NOT NULL,
    fill_id UUID,
    status INTEGER,
    headers JSONB,
    body BYTEA,
    size BIGINT DEFAULT 0 NOT NULL,
    cost_nano BIGINT,
    created_at TIMESTAMP WITH TIME ZONE DEFAULT now() NOT NULL,
    expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
    CONSTRAINT pk_entries PRIMARY KEY (account_id, gateway_id, key),
    CONSTRAINT fk_entries_account_id_gateways FOREIGN KEY (account_id, gateway_id)
        REFERENCES gateways (account_id, id) ON DELETE CASCADE,
    CONSTRAINT ck_entries_size_not_negative CHECK (size >= 0),
    CONSTRAINT ck_entries_ready_has_answer CHECK (NOT ready OR (status IS NOT NULL AND body IS NOT NULL))
);
CREATE INDEX ix_entries_expires_at ON cache.entries (expires_at);
CREATE INDEX ix_entries_oldest ON cache.entries (account_id, gateway_id, created_at);

CREATE TABLE cache.usage (
    account_id TEXT NOT NULL,
    gateway_id TEXT NOT NULL,
    bytes BIGINT DEFAULT 0 NOT NULL,
    CONSTRAINT pk_usage PRIMARY KEY (account_id, gateway_id),
    CONSTRAINT fk_usage_account_id_gateways FOREIGN KEY (account_id, gateway_id)
        REFERENCES gateways (account_id, id) ON DELETE CASCADE
);

-- Statement triggers with transition tables: one UPDATE of a gateway's usage row per statement, whatever the
-- number of rows (a sweep deletes a thousand at once). Deletes only UPDATE: a gateway being deleted has already
-- lost its usage row to the cascade, and must not get it back.
CREATE FUNCTION cache.count_bytes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO cache.usage AS u (account_id, gateway_id, bytes)
        SELECT account_id, gateway_id, sum(size) FROM new_rows GROUP BY account_id, gateway_id
        ON CONFLICT (account_id, gateway_id) DO UPDATE SET bytes = u.bytes + excluded.bytes;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE cache.usage u SET bytes = u.bytes - o.size
          FROM (SELECT account_id, gateway_id, sum(size) AS size FROM old_rows GROUP BY account_id, gateway_id) o
         WHERE u.account_id = o.account_id AND u.gateway_id = o.gateway_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER count_inserted AFTER INSERT ON cache.entries REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cache.count_bytes();
CREATE TRIGGER count_updated AFTER UPDATE ON cache.entries REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cache.count_bytes();
CREATE TRIGGER count_deleted AFTER DELETE ON cache.entries REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION cache.count_bytes();

CREATE FUNCTION cache.fill(p_account text, p_gateway text, p_key bytea, p_fill uuid, p_status integer,
                           p_headers jsonb, p_body bytea, p_cost bigint, p_ttl_s double precision,
                           p_max_bytes bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_total bigint;
    v_evicted integer;
BEGIN
    UPDATE cache.entries
       SET ready = true, status = p_status, headers = p_headers, body = p_body,
           size = octet_length(p_body) + octet_length(p_headers::text), cost_nano = p_cost,
           created_at = now(), expires_at = now() + make_interval(secs => p_ttl_s)
     WHERE account_id = p_account AND gateway_id = p_gateway AND key = p_key AND fill_id = p_fill AND NOT ready;
    IF NOT FOUND THEN
        RETURN -1;
    END IF;
    SELECT bytes INTO v_total FROM cache.usage WHERE account_id = p_account AND gateway_id = p_gateway;
    IF p_max_bytes IS NULL OR v_total <= p_max_bytes THEN
        RETURN 0;
    END IF;
    -- the oldest answers first, until what they free covers the excess (the row just filled is kept)
    DELETE FROM cache.entries e USING (
        SELECT key FROM (
            SELECT key, size, sum(size) OVER (ORDER BY created_at, key) AS freed FROM (
                SELECT key, size, created_at FROM cache.entries
                 WHERE account_id = p_account AND gateway_id = p_gateway AND ready AND key <> p_key
                 ORDER BY created_at, key LIMIT 1000) oldest) running
         WHERE freed - size < v_total - p_max_bytes) victims
     WHERE e.account_id = p_account AND e.gateway_id = p_gateway AND e.key = victims.key;
    GET DIAGNOSTICS v_evicted = ROW_COUNT;
    RETURN v_evicted;
END $$;

CREATE FUNCTION ledger.bill_cache_hit(p_tenant text, p_amount bigint, p_request_id text, p_now timestamptz)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid := md5(p_request_id || ':cache_hit')::uuid;
    v_usage bigint;
    v_result jsonb;
BEGIN
    IF p_amount <= 0 THEN
        RETURN jsonb_build_object('billed', 0);
    END IF;
    SELECT id INTO v_usage FROM ledger.accounts
     WHERE code = 'usage' AND owner = '' AND shard = abs(hashtext(v_id::text)) % 16;
    v_result := ledger.bill_unheld(v_id, p_tenant, v_usage, p_amount, p_request_id, p_now);
    IF NOT coalesce((v_result ->> 'replay')::boolean, false)
       AND EXISTS (SELECT 1 FROM ledger.accounts WHERE code = 'credits' AND owner = p_tenant AND shard = 0
                     AND spend_limit IS NOT NULL) THEN
        INSERT INTO ledger.usage_hourly AS u (tenant, hour, spent)
        VALUES (p_tenant, date_trunc('hour', p_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', p_amount)
        ON CONFLICT (tenant, hour) DO UPDATE SET spent = u.spent + p_amount;
    END IF;
    RETURN v_result;
END $$;
"""


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script(SCHEMA)


def downgrade() -> None:
    run_script("DROP FUNCTION ledger.bill_cache_hit(text, bigint, text, timestamptz); DROP SCHEMA cache CASCADE;")
