"""Narrow analytics rollups, kept per statement: 0021's rollups were keyed by every dimension (the client's
metadata included), so a day held almost as many keys as requests, and a row-level trigger wrote one delta per
log row. Now:

- `analytics.hourly`, `analytics.daily` and `analytics.weekly` (ISO weeks, from Monday 00:00 UTC): per account,
  bucket start and the common dimensions only (gateway, provider, model, billing mode, status code, user id,
  email, groups as a sorted text array of the distinct names, service token), the sums of requests, errors and
  tokens and the cost in integer nano-USD (`cost_nano`; the log's cost has 9 decimals, so this is exact). `dims`
  is the md5 of the dimension values: the key is (account_id, start, dims), its primary key; each row is the
  whole sum of its key (no deltas, no compaction).
- `analytics.hourly_metadata` and `analytics.daily_metadata`: per account, bucket start, gateway, client
  metadata key (not `cf.*`) and value (JSON null left out), the same sums. A request counts once per key.
- Statement-level triggers on `request_logs` with transition tables: an INSERT (the log writer inserts a batch in
  one statement) sums its rows per key and adds them to the five tables in one statement (INSERT ... ON CONFLICT
  DO UPDATE, keys in order, so concurrent writers lock them in the same order); a DELETE subtracts, an UPDATE
  does both; keys left at zero requests are deleted; TRUNCATE empties the rollups. All in the log statement's
  own transaction: the rollups equal the log at every snapshot.
- The rollups are summed from the rows the log already holds. The BRIN index on `request_logs.created_at` (the
  partial hours at a query's edges) summarizes a filled page range soon (`autosummarize`), not at the next
  vacuum.

The downgrade puts back 0021's tables and triggers (summed from the log, as 0021 did).

Revision ID: 0025_narrow_rollups
Revises: 0024_rate_limits
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only

revision = "0025_narrow_rollups"
down_revision = "0024_rate_limits"
branch_labels = None
depends_on = None


def run_script(sql: str) -> None:
    """Run a multi-statement script through asyncpg itself: SQLAlchemy's asyncpg adapter prepares each statement,
    and a prepared statement holds one command. Each migration keeps its own copy (it imports nothing from
    `gateway`)."""
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


DIMENSIONS = ("gateway_id", "provider", "model", "billing_mode", "status_code", "user_id", "email", "groups",
              "service_token")
SUMS = ("requests", "errors", "tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write", "cost_nano")

SUM_COLUMNS = """
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    tokens_in BIGINT NOT NULL,
    tokens_out BIGINT NOT NULL,
    tokens_cache_read BIGINT NOT NULL,
    tokens_cache_write BIGINT NOT NULL,
    cost_nano BIGINT NOT NULL"""

TABLES = "".join(f"""
CREATE TABLE analytics.{level} (
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
    groups TEXT[],
    service_token TEXT,{SUM_COLUMNS},
    CONSTRAINT pk_{level} PRIMARY KEY (account_id, start, dims)
) WITH (fillfactor = 80);
CREATE TABLE analytics.{level}_metadata (
    account_id TEXT NOT NULL,
    start TIMESTAMP WITH TIME ZONE NOT NULL,
    dims UUID NOT NULL,
    gateway_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value JSONB NOT NULL,{SUM_COLUMNS},
    CONSTRAINT pk_{level}_metadata PRIMARY KEY (account_id, start, dims)
) WITH (fillfactor = 80);
""" for level in ("hourly", "daily")) + f"""
CREATE TABLE analytics.weekly (
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
    groups TEXT[],
    service_token TEXT,{SUM_COLUMNS},
    CONSTRAINT pk_weekly PRIMARY KEY (account_id, start, dims)
) WITH (fillfactor = 80);
"""

# One changed log row (alias c, with its `sign`) as the rollups hold it.
CHANGED_ROWS = """
    SELECT c.sign, c.account_id, c.created_at, c.gateway_id, c.provider, c.model, c.billing_mode, c.status_code,
           nullif(c.identity->>'user_id', '') AS user_id,
           nullif(c.identity->>'email', '') AS email,
           CASE WHEN jsonb_typeof(c.identity->'groups') IS DISTINCT FROM 'array' OR c.identity->'groups' = '[]'::jsonb THEN NULL
                WHEN jsonb_array_length(c.identity->'groups') = 1 THEN ARRAY[c.identity->'groups'->>0]
                ELSE ARRAY(SELECT DISTINCT g FROM jsonb_array_elements_text(c.identity->'groups') AS g ORDER BY 1)
           END AS groups,
           nullif(c.identity->>'service_token', '') AS service_token,
           CASE WHEN jsonb_typeof(c.metadata) = 'object' THEN c.metadata END AS metadata,
           c.sign * (NOT c.success)::int AS errors,
           c.sign * coalesce(c.tokens_in, 0)::bigint AS tokens_in,
           c.sign * coalesce(c.tokens_out, 0)::bigint AS tokens_out,
           c.sign * coalesce(c.tokens_cache_read, 0)::bigint AS tokens_cache_read,
           c.sign * coalesce(c.tokens_cache_write, 0)::bigint AS tokens_cache_write,
           c.sign * (coalesce(c.cost_usd, 0) * 1000000000)::bigint AS cost_nano
      FROM ({changes}) c"""

SUMMED = ("sum(sign)", "sum(errors)", "sum(tokens_in)", "sum(tokens_out)", "sum(tokens_cache_read)",
          "sum(tokens_cache_write)", "sum(cost_nano)")
ADD = ", ".join(f"{s} = t.{s} + EXCLUDED.{s}" for s in SUMS)


def _upserts(source: str) -> str:
    """One statement adding the rows of `source` (CHANGED_ROWS) to the four rollups: three in data-modifying
    CTEs, the last as the statement itself."""
    dims = ", ".join(DIMENSIONS)
    sums = ", ".join(SUMS)
    summed = ", ".join(SUMMED)
    parts = []
    for level, unit in (("hourly", "hour"), ("daily", "day"), ("weekly", "week")):
        parts.append(f"""
    INSERT INTO analytics.{level} AS t (account_id, start, dims, {dims}, {sums})
    SELECT account_id, start, md5(row({dims})::text)::uuid, {dims}, {summed}
      FROM (SELECT *, date_trunc('{unit}', created_at, 'UTC') AS start FROM r) x
     GROUP BY account_id, start, {dims}
     ORDER BY 1, 2, 3
    ON CONFLICT (account_id, start, dims) DO UPDATE SET {ADD}""")
        if level == "weekly":
            continue
        parts.append(f"""
    INSERT INTO analytics.{level}_metadata AS t (account_id, start, dims, gateway_id, key, value, {sums})
    SELECT account_id, start, md5(row(gateway_id, key, value)::text)::uuid, gateway_id, key, value, {summed}
      FROM (SELECT r.*, date_trunc('{unit}', r.created_at, 'UTC') AS start, e.key, e.value
              FROM r CROSS JOIN LATERAL jsonb_each(r.metadata) AS e(key, value)
             WHERE e.key NOT LIKE 'cf.%' AND e.value <> 'null'::jsonb) x
     GROUP BY account_id, start, gateway_id, key, value
     ORDER BY 1, 2, 3
    ON CONFLICT (account_id, start, dims) DO UPDATE SET {ADD}""")
    ctes = "".join(f",\n    u{i} AS ({sql}\n    )" for i, sql in enumerate(parts[:-1]))
    return f"WITH r AS MATERIALIZED ({CHANGED_ROWS.format(changes=source)}){ctes}{parts[-1]}"


def _emptied(source: str) -> str:
    """Delete the keys of the hours and days `source` touched that no log row is left in."""
    out = []
    for level, unit in (("hourly", "hour"), ("daily", "day"), ("weekly", "week")):
        for table in (level, f"{level}_metadata") if level != "weekly" else (level,):
            out.append(f"""
    DELETE FROM analytics.{table} t
     USING (SELECT DISTINCT account_id, date_trunc('{unit}', created_at, 'UTC') AS start FROM ({source}) c) k
     WHERE t.account_id = k.account_id AND t.start = k.start AND t.requests = 0;""")
    return "".join(out)


def _function(name: str, source: str, empties: bool) -> str:
    return f"""
CREATE FUNCTION analytics.{name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {_upserts(source)};{_emptied(source) if empties else ""}
    RETURN NULL;
END
$$;
"""


SCHEMA = (
    TABLES
    + _function("log_rows_inserted", "SELECT 1 AS sign, * FROM new_rows", False)
    + _function("log_rows_deleted", "SELECT -1 AS sign, * FROM old_rows", True)
    + _function("log_rows_updated", "SELECT 1 AS sign, * FROM new_rows UNION ALL SELECT -1, * FROM old_rows", True)
    + """
CREATE FUNCTION analytics.log_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE analytics.hourly, analytics.daily, analytics.weekly, analytics.hourly_metadata, analytics.daily_metadata;
    RETURN NULL;
END
$$;

CREATE TRIGGER analytics_inserted AFTER INSERT ON request_logs REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.log_rows_inserted();
CREATE TRIGGER analytics_deleted AFTER DELETE ON request_logs REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.log_rows_deleted();
CREATE TRIGGER analytics_updated AFTER UPDATE ON request_logs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.log_rows_updated();
CREATE TRIGGER analytics_truncated AFTER TRUNCATE ON request_logs
    FOR EACH STATEMENT EXECUTE FUNCTION analytics.log_truncated();
"""
)

# The rows the log holds, summed into the rollups (the trigger's own statement over the whole log).
BACKFILL = _upserts("SELECT 1 AS sign, * FROM request_logs") + ";\n"

DROP_0021 = """
DROP TRIGGER analytics_inserted ON request_logs;
DROP TRIGGER analytics_deleted ON request_logs;
DROP TRIGGER analytics_updated ON request_logs;
DROP TRIGGER analytics_truncated ON request_logs;
DROP FUNCTION analytics.log_row_inserted();
DROP FUNCTION analytics.log_rows_deleted();
DROP FUNCTION analytics.log_rows_updated();
DROP FUNCTION analytics.log_truncated();
DROP TABLE analytics.hourly;
DROP TABLE analytics.daily;
"""

DROP_0025 = """
DROP TRIGGER analytics_inserted ON request_logs;
DROP TRIGGER analytics_deleted ON request_logs;
DROP TRIGGER analytics_updated ON request_logs;
DROP TRIGGER analytics_truncated ON request_logs;
DROP FUNCTION analytics.log_rows_inserted();
DROP FUNCTION analytics.log_rows_deleted();
DROP FUNCTION analytics.log_rows_updated();
DROP FUNCTION analytics.log_truncated();
DROP TABLE analytics.hourly;
DROP TABLE analytics.daily;
DROP TABLE analytics.weekly;
DROP TABLE analytics.hourly_metadata;
DROP TABLE analytics.daily_metadata;
"""


# The BRIN index the partial hours at a query's edges are read through: a page range the log writer has just
# filled is summarized soon (autovacuum's work item) rather than at the next vacuum; until then every query scans it.
AUTOSUMMARIZE = "ALTER INDEX ix_request_logs_created_at SET (autosummarize = on);\n"


def upgrade() -> None:
    run_script(DROP_0021 + SCHEMA + BACKFILL + AUTOSUMMARIZE)


# -- the downgrade: 0021's rollups, as 0021 installed them ------------------------------------------------------

OLD_DIMENSIONS = ("gateway_id", "provider", "model", "billing_mode", "status_code", "user_id", "email", "groups",
                  "service_token", "metadata")
OLD_SUMS = ("requests", "errors", "tokens_in", "tokens_out", "tokens_cache_read", "tokens_cache_write", "cost_usd")

OLD_COLUMNS = """
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

OLD_TABLES = f"""
CREATE TABLE analytics.hourly ({OLD_COLUMNS},
    merged BOOLEAN DEFAULT false NOT NULL
);
CREATE INDEX ix_hourly_account_id_start ON analytics.hourly (account_id, start);
CREATE UNIQUE INDEX ix_hourly_merged_key ON analytics.hourly (account_id, start, dims) WHERE merged;
CREATE INDEX ix_hourly_deltas ON analytics.hourly (start) WHERE NOT merged;

CREATE TABLE analytics.daily ({OLD_COLUMNS},
    CONSTRAINT pk_daily PRIMARY KEY (account_id, start, dims)
);
"""

OLD_ROW_DIMENSIONS = """
    {r}.gateway_id, {r}.provider, {r}.model, {r}.billing_mode, {r}.status_code,
    nullif({r}.identity->>'user_id', '') AS user_id,
    nullif({r}.identity->>'email', '') AS email,
    CASE WHEN jsonb_typeof({r}.identity->'groups') = 'array' AND {r}.identity->'groups' <> '[]'::jsonb
         THEN {r}.identity->'groups' END AS groups,
    nullif({r}.identity->>'service_token', '') AS service_token,
    CASE WHEN jsonb_typeof({r}.metadata) = 'object'
         THEN {r}.metadata - ARRAY['cf.user_id', 'cf.user.email', 'cf.user.groups', 'cf.service_token']
         ELSE '{{}}'::jsonb END AS metadata"""

OLD_SIGNED_SUMS = ("sum(sign)", "sum(CASE WHEN success THEN 0 ELSE sign END)", "sum(sign * coalesce(tokens_in, 0))",
                   "sum(sign * coalesce(tokens_out, 0))", "sum(sign * coalesce(tokens_cache_read, 0))",
                   "sum(sign * coalesce(tokens_cache_write, 0))", "coalesce(sum(sign * cost_usd), 0)")


def _old_add(changes: str) -> str:
    dims = ", ".join(OLD_DIMENSIONS)
    return f"""
    INSERT INTO analytics.hourly (account_id, start, dims, {dims}, {", ".join(OLD_SUMS)})
    SELECT account_id, start, md5(row({dims})::text)::uuid, {dims}, {", ".join(OLD_SIGNED_SUMS)}
      FROM (SELECT c.sign, c.account_id, date_trunc('hour', c.created_at, 'UTC') AS start, c.success,
                   c.tokens_in, c.tokens_out, c.tokens_cache_read, c.tokens_cache_write, c.cost_usd,
                   {OLD_ROW_DIMENSIONS.format(r="c")}
              FROM ({changes}) c) d
     GROUP BY account_id, start, {dims}
    HAVING {" OR ".join(f"{s} <> 0" for s in OLD_SIGNED_SUMS)};"""


def _old_statement_function(name: str, changes: str) -> str:
    return f"""
CREATE FUNCTION analytics.{name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN{_old_add(changes)}
    RETURN NULL;
END
$$;
"""


OLD_ROW_INSERTED = """
CREATE FUNCTION analytics.log_row_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    SELECT """ + OLD_ROW_DIMENSIONS.format(r="NEW") + """ INTO d;
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

OLD_SCHEMA = (
    OLD_TABLES + OLD_ROW_INSERTED
    + _old_statement_function("log_rows_deleted", "SELECT -1 AS sign, * FROM old_rows")
    + _old_statement_function("log_rows_updated",
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
"""
)


def _old_backfill(table: str, unit: str) -> str:
    dims = ", ".join(OLD_DIMENSIONS)
    merged = (", merged", ", true") if table == "hourly" else ("", "")
    return f"""
INSERT INTO analytics.{table} (account_id, start, dims{merged[0]}, {dims}, {", ".join(OLD_SUMS)})
SELECT account_id, start, md5(row({dims})::text)::uuid{merged[1]}, {dims},
       count(*), count(*) FILTER (WHERE NOT success), sum(coalesce(tokens_in, 0)), sum(coalesce(tokens_out, 0)),
       sum(coalesce(tokens_cache_read, 0)), sum(coalesce(tokens_cache_write, 0)), coalesce(sum(cost_usd), 0)
  FROM (SELECT r.account_id, date_trunc('{unit}', r.created_at, 'UTC') AS start, r.success, r.tokens_in,
               r.tokens_out, r.tokens_cache_read, r.tokens_cache_write, r.cost_usd, {OLD_ROW_DIMENSIONS.format(r='r')}
          FROM request_logs r) d
 GROUP BY account_id, start, {dims};
"""


def downgrade() -> None:
    run_script(DROP_0025 + OLD_SCHEMA + _old_backfill("hourly", "hour") + _old_backfill("daily", "day")
               + "ALTER INDEX ix_request_logs_created_at RESET (autosummarize);")
