"""Analytics rollups: hourly and daily sums of the request log, kept by triggers on `request_logs`; forecast alerts.

- `analytics.hourly` and `analytics.daily`: per account, bucket start and dimension values (gateway, provider,
  model, billing mode, status code, the identity fields, the client metadata), the sums of requests, errors,
  tokens and cost. Triggers on `request_logs` add delta rows to `hourly` in the same transaction as the log rows:
  one per inserted row (a row-level trigger: the log writer inserts one row per statement), one per (hour,
  dimension values) that a DELETE or UPDATE statement changed, with negative sums for what left. So the sums of
  `daily` (compacted hours) plus the deltas always equal the rows of the log. The compaction
  (gateway/analytics/store.py) moves deltas into one `merged` hourly row and one daily row per key, in one
  transaction. Existing log rows are summed in here as merged rows.
- A BRIN index on `request_logs.created_at`: the partial hours at the edges of a query are read from the log.
- `limits.alerts` gains `kind` (`fraction`, or `forecast`: the forecast said the bucket runs out before its window
  ends; recorded at fraction 0, which no `alert_at` fraction can be, so its unique key holds one per bucket and
  window) and `exhausted_at` (when the forecast said).

Revision ID: 0021_analytics_rollups
Revises: 0020_response_cache
Create Date: 2026-12-05
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0021_analytics_rollups"
down_revision = "0020_response_cache"
branch_labels = None
depends_on = None

DIMENSIONS = ("gateway_id", "provider", "model", "billing_mode", "status_code", "user_id", "email", "groups",
              "service_token", "metadata")
SUMS = ("requests", "errors", "tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write", "cost_usd")


COLUMNS = """
    account_id TEXT NOT NULL,
    start TIMESTAMP WITH TIME ZONE NOT NULL,
    dims UUID NOT NULL,
    gateway_id TEXT NOT NULL,
    provider TEXT,
    model TEXT,
    billing_mode TEXT,
    status_code INTEGER,
    user_id TEXT,
    email TEXT,
    groups JSONB,
    service_token TEXT,
    metadata JSONB DEFAULT '{}'::jsonb NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    tokens_in BIGINT NOT NULL,
    tokens_out BIGINT NOT NULL,
    tokens_cache_read BIGINT NOT NULL,
    tokens_cache_write BIGINT NOT NULL,
    cost_usd NUMERIC NOT NULL"""

TABLES = f"""
CREATE TABLE analytics.hourly ({COLUMNS},
    merged BOOLEAN DEFAULT false NOT NULL
);
CREATE INDEX ix_hourly_account_id_start ON analytics.hourly (account_id, start);
CREATE UNIQUE INDEX ix_hourly_merged_key ON analytics.hourly (account_id, start, dims) WHERE merged;
CREATE INDEX ix_hourly_deltas ON analytics.hourly (start) WHERE NOT merged;

CREATE TABLE analytics.daily ({COLUMNS},
    CONSTRAINT pk_daily PRIMARY KEY (account_id, start, dims)
);
"""


# One log row's dimension values, as the rollups hold them: the identity out of `identity`, and only the client's
# metadata (the cf.* keys repeat the identity). `{r}` is the alias of the log row.
ROW_DIMENSIONS = """
    {r}.gateway_id, {r}.provider, {r}.model, {r}.billing_mode, {r}.status_code,
    nullif({r}.identity->>'user_id', '') AS user_id,
    nullif({r}.identity->>'email', '') AS email,
    CASE WHEN jsonb_typeof({r}.identity->'groups') = 'array' AND {r}.identity->'groups' <> '[]'::jsonb
         THEN {r}.identity->'groups' END AS groups,
    nullif({r}.identity->>'service_token', '') AS service_token,
    CASE WHEN jsonb_typeof({r}.metadata) = 'object'
         THEN {r}.metadata - ARRAY['cf.user_id', 'cf.user.email', 'cf.user.groups', 'cf.service_token']
         ELSE '{{}}'::jsonb END AS metadata"""

# The sums of a group of changed rows, each row counted with its `sign` (+1 added, -1 removed).
SIGNED_SUMS = ("sum(sign)", "sum(CASE WHEN success THEN 0 ELSE sign END)", "sum(sign * coalesce(tokens_in, 0))",
               "sum(sign * coalesce(tokens_out, 0))", "sum(sign * coalesce(tokens_cache_read, 0))",
               "sum(sign * coalesce(tokens_cache_write, 0))", "coalesce(sum(sign * cost_usd), 0)")


def _add(changes: str) -> str:
    """Insert the deltas of `changes` (rows of request_logs with a `sign`) into the hourly rollup; a group whose
    changes cancel out (an update that changed nothing summed here) adds nothing."""
    dims = ", ".join(DIMENSIONS)
    return f"""
    INSERT INTO analytics.hourly (account_id, start, dims, {dims}, {", ".join(SUMS)})
    SELECT account_id, start, md5(row({dims})::text)::uuid, {dims}, {", ".join(SIGNED_SUMS)}
      FROM (SELECT c.sign, c.account_id, date_trunc('hour', c.created_at, 'UTC') AS start, c.success,
                   c.tokens_in, c.tokens_out, c.tokens_cache_read, c.tokens_cache_write, c.cost_usd,
                   {ROW_DIMENSIONS.format(r="c")}
              FROM ({changes}) c) d
     GROUP BY account_id, start, {dims}
    HAVING {" OR ".join(f"{s} <> 0" for s in SIGNED_SUMS)};"""


def _statement_function(name: str, changes: str) -> str:
    return f"""
CREATE FUNCTION analytics.{name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN{_add(changes)}
    RETURN NULL;
END
$$;
"""


# The log writer inserts one row per statement: a row-level trigger costs it least (one plain INSERT, no grouping).
ROW_INSERTED = """
CREATE FUNCTION analytics.log_row_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    SELECT """ + ROW_DIMENSIONS.format(r="NEW") + """ INTO d;
    INSERT INTO analytics.hourly (account_id, start, dims, gateway_id, provider, model, billing_mode, status_code,
                                  user_id, email, groups, service_token, metadata, requests, errors, tokens_in,
                                  tokens_out, tokens_cache_read, tokens_cache_write, cost_usd)
    VALUES (NEW.account_id, date_trunc('hour', NEW.created_at, 'UTC'),
            md5(row(d.gateway_id, d.provider, d.model, d.billing_mode, d.status_code, d.user_id, d.email, d.groups,
                    d.service_token, d.metadata)::text)::uuid,
            d.gateway_id, d.provider, d.model, d.billing_mode, d.status_code, d.user_id, d.email, d.groups,
            d.service_token, d.metadata, 1, CASE WHEN NEW.success THEN 0 ELSE 1 END, coalesce(NEW.tokens_in, 0),
            coalesce(NEW.tokens_out, 0), coalesce(NEW.tokens_cache_read, 0), coalesce(NEW.tokens_cache_write, 0),
            coalesce(NEW.cost_usd, 0));
    RETURN NULL;
END
$$;
"""

SCHEMA = (
    "CREATE SCHEMA analytics;\n" + TABLES + ROW_INSERTED
    + _statement_function("log_rows_deleted", "SELECT -1 AS sign, * FROM old_rows")
    + _statement_function("log_rows_updated",
                          "SELECT 1 AS sign, * FROM new_rows UNION ALL SELECT -1, * FROM old_rows")
    + """
CREATE FUNCTION analytics.log_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM analytics.hourly;
    DELETE FROM analytics.daily;
    RETURN NULL;
END
$$;

CREATE TRIGGER analytics_inserted AFTER INSERT ON request_logs
    FOR EACH ROW EXECUTE FUNCTION analytics.log_row_inserted();
CREATE TRIGGER analytics_deleted AFTER DELETE ON request_logs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.log_rows_deleted();
CREATE TRIGGER analytics_updated AFTER UPDATE ON request_logs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.log_rows_updated();
CREATE TRIGGER analytics_truncated AFTER TRUNCATE ON request_logs
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.log_truncated();

CREATE INDEX ix_request_logs_created_at ON request_logs USING brin (created_at);

ALTER TABLE limits.alerts ADD COLUMN kind TEXT DEFAULT 'fraction' NOT NULL;
ALTER TABLE limits.alerts ADD COLUMN exhausted_at TIMESTAMP WITH TIME ZONE;
ALTER TABLE limits.alerts ADD CONSTRAINT ck_alerts_kind CHECK (kind IN ('fraction', 'forecast'));
"""
)


def _backfill(table: str, unit: str) -> str:
    dims = ", ".join(DIMENSIONS)
    merged = (", merged", ", true") if table == "hourly" else ("", "")
    return f"""
INSERT INTO analytics.{table} (account_id, start, dims{merged[0]}, {dims}, {", ".join(SUMS)})
SELECT account_id, start, md5(row({dims})::text)::uuid{merged[1]}, {dims},
       count(*), count(*) FILTER (WHERE NOT success), sum(coalesce(tokens_in, 0)), sum(coalesce(tokens_out, 0)),
       sum(coalesce(tokens_cache_read, 0)), sum(coalesce(tokens_cache_write, 0)), coalesce(sum(cost_usd), 0)
  FROM (SELECT r.account_id, date_trunc('{unit}', r.created_at, 'UTC') AS start, r.success, r.tokens_in,
               r.tokens_out, r.tokens_cache_read, r.tokens_cache_write, r.cost_usd, {ROW_DIMENSIONS.format(r='r')}
          FROM request_logs r) d
 GROUP BY account_id, start, {dims};
"""


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def upgrade() -> None:
    run_script(SCHEMA + _backfill("hourly", "hour") + _backfill("daily", "day"))


def downgrade() -> None:
    run_script("""
DROP TRIGGER analytics_inserted ON request_logs;
DROP TRIGGER analytics_deleted ON request_logs;
DROP TRIGGER analytics_updated ON request_logs;
DROP TRIGGER analytics_truncated ON request_logs;
DROP SCHEMA analytics CASCADE;
DROP INDEX ix_request_logs_created_at;
ALTER TABLE limits.alerts DROP CONSTRAINT ck_alerts_kind;
ALTER TABLE limits.alerts DROP COLUMN exhausted_at;
ALTER TABLE limits.alerts DROP COLUMN kind;
""")
