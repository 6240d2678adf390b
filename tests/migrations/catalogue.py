"""A database's schema as plain data, read from pg_catalog, so that two databases can be compared: every schema but
Postgres's own, with its tables, columns (type, nullability, default, identity), constraints, indexes, views
(definition), sequences, functions (pg_get_functiondef), triggers, types, privileges (the reporting role's grants
among them), comments, and a catch-all list of every object the database has beyond the built-in ones.

Column order is not compared: a column added by ALTER TABLE comes last, and databases created while migrations
still built their tables from the code's table definitions have some columns earlier. Nothing reads columns by
position. The rows the migrations wrote are compared too, without their timestamps.
"""

from __future__ import annotations

import difflib
from typing import Any

import asyncpg

# Postgres's own schemas; everything else was made by the migrations
OURS = ("n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp_%' "
        "AND n.nspname NOT LIKE 'pg_toast_temp_%'")
FIRST_USER_OID = 16384  # objects below it come with the server (FirstNormalObjectId)

QUERIES: dict[str, str] = {
    "schemas": f"""
        SELECT n.nspname AS key, pg_get_userbyid(n.nspowner) AS owner, n.nspacl::text AS acl
          FROM pg_namespace n WHERE {OURS}""",
    "relations": f"""
        SELECT n.nspname || '.' || c.relname AS key, c.relkind::text AS kind, c.relpersistence::text AS persistence,
               c.relrowsecurity AS row_security, c.relforcerowsecurity AS force_row_security,
               c.reloptions::text AS options, c.relacl::text AS acl, pg_get_userbyid(c.relowner) AS owner,
               c.relispartition AS partition, pg_get_partkeydef(c.oid) AS partition_key
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {OURS} AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')""",
    "columns": f"""
        SELECT n.nspname || '.' || c.relname || '.' || a.attname AS key,
               format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null,
               pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity::text AS identity,
               a.attgenerated::text AS generated, co.collname AS collation, a.attacl::text AS acl
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          LEFT JOIN pg_collation co ON co.oid = a.attcollation AND co.collname <> 'default'
         WHERE {OURS} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c') AND a.attnum > 0 AND NOT a.attisdropped""",
    "constraints": f"""
        SELECT n.nspname || '.' || coalesce(c.relname, t.typname) || '.' || k.conname AS key,
               k.contype::text AS type, pg_get_constraintdef(k.oid) AS definition,
               k.condeferrable AS deferrable, k.condeferred AS deferred, k.convalidated AS validated
          FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
          LEFT JOIN pg_class c ON c.oid = k.conrelid LEFT JOIN pg_type t ON t.oid = k.contypid
         WHERE {OURS}""",
    "indexes": f"""
        SELECT n.nspname || '.' || c.relname AS key, pg_get_indexdef(i.indexrelid) AS definition,
               i.indisclustered AS clustered, i.indisvalid AS valid, i.indisreplident AS replica_identity
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {OURS}""",
    "views": f"""
        SELECT n.nspname || '.' || c.relname AS key, pg_get_viewdef(c.oid, true) AS definition
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {OURS} AND c.relkind IN ('v', 'm')""",
    "sequences": f"""
        SELECT n.nspname || '.' || c.relname AS key, format_type(s.seqtypid, NULL) AS type, s.seqstart AS start,
               s.seqincrement AS increment, s.seqmin AS min, s.seqmax AS max, s.seqcache AS cache,
               s.seqcycle AS cycle,
               (SELECT pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) || ' (' || d.deptype::text || ')'
                  FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                   AND d.deptype IN ('a', 'i') AND d.refclassid = 'pg_class'::regclass) AS owned_by
          FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {OURS}""",
    "functions": f"""
        SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS key,
               p.prokind::text AS kind,
               CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END AS definition,
               p.proacl::text AS acl, pg_get_userbyid(p.proowner) AS owner
          FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE {OURS}""",
    "triggers": f"""
        SELECT n.nspname || '.' || c.relname || '.' || t.tgname AS key, pg_get_triggerdef(t.oid) AS definition,
               t.tgenabled::text AS enabled
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE {OURS} AND NOT t.tgisinternal""",
    "types": f"""
        SELECT n.nspname || '.' || t.typname AS key, t.typtype::text AS type,
               format_type(t.typbasetype, t.typtypmod) AS base, t.typnotnull AS not_null,
               pg_get_expr(t.typdefaultbin, 0) AS default,
               (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid)
                   AS labels,
               t.typacl::text AS acl
          FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
          LEFT JOIN pg_class c ON c.oid = t.typrelid
         WHERE {OURS} AND t.typtype IN ('e', 'd', 'r', 'm', 'c', 'b', 'p')
           AND (t.typrelid = 0 OR c.relkind = 'c') AND t.typelem = 0""",
    "default_privileges": """
        SELECT pg_get_userbyid(d.defaclrole) || ' ' || coalesce(n.nspname, '*') || ' ' || d.defaclobjtype::text AS key,
               d.defaclacl::text AS acl
          FROM pg_default_acl d LEFT JOIN pg_namespace n ON n.oid = d.defaclnamespace""",
    "extensions": """
        SELECT e.extname AS key, n.nspname AS schema, e.extversion AS version
          FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace""",
    "comments": f"""
        SELECT pg_describe_object(d.classoid, d.objoid, d.objsubid) AS key, d.description
          FROM pg_description d WHERE d.objoid >= {FIRST_USER_OID}""",
    "policies": """
        SELECT schemaname || '.' || tablename || '.' || policyname AS key, permissive, roles::text, cmd, qual,
               with_check
          FROM pg_policies""",
}

# Every object beyond the built-in ones, by its description ("function ledger.hold(uuid,...)", "rule _RETURN on view
# reporting.balances", "default value for column id of table ..."), from the catalogs whose rows are objects of
# their own: kinds not read above (casts, operators, statistics, event triggers, ...) still count. TOAST tables are
# named after oids, and so are the internal triggers of foreign keys (the constraints are compared): left out.
OBJECT_CATALOGS = ("pg_class", "pg_proc", "pg_type", "pg_namespace", "pg_constraint", "pg_trigger", "pg_rewrite",
                   "pg_attrdef", "pg_operator", "pg_opclass", "pg_opfamily", "pg_cast", "pg_collation",
                   "pg_conversion", "pg_policy", "pg_event_trigger", "pg_extension", "pg_statistic_ext",
                   "pg_ts_config", "pg_ts_dict", "pg_ts_parser", "pg_ts_template", "pg_foreign_data_wrapper",
                   "pg_foreign_server", "pg_publication", "pg_language", "pg_transform", "pg_am")
QUERIES["objects"] = " UNION ".join(
    f"SELECT pg_describe_object('{name}'::regclass, oid, 0) AS key, '{name}' AS catalog FROM {name} "
    f"WHERE oid >= {FIRST_USER_OID}" + (" AND NOT tgisinternal" if name == "pg_trigger" else "")
    for name in OBJECT_CATALOGS
)

# Columns whose values differ between two databases migrated the same way: when they ran
VOLATILE_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")


async def catalogue(conn: asyncpg.Connection) -> dict[str, dict[str, Any]]:
    """{section: {object: what it is}} for the database `conn` is connected to."""
    found: dict[str, dict[str, Any]] = {}
    for section, query in QUERIES.items():
        rows = await conn.fetch(query)
        entries: dict[str, Any] = {}
        for row in rows:
            key = row["key"]
            if section == "objects" and ("pg_toast" in key or key.startswith("toast table")):
                continue
            value = {k: v for k, v in dict(row).items() if k != "key"}
            assert key not in entries, (section, key)  # keys name each object once
            entries[key] = value
        found[section] = entries
    found["rows"] = await _rows(conn, found["relations"], found["columns"])
    return found


async def _rows(conn: asyncpg.Connection, relations: dict[str, Any], columns: dict[str, Any]) -> dict[str, Any]:
    """Every table's rows (sorted, as JSON text) without the columns that say when they were written."""
    rows: dict[str, Any] = {}
    for name, relation in relations.items():
        if relation["kind"] not in ("r", "p"):
            continue
        schema, table = name.split(".", 1)
        volatile = [key.rsplit(".", 1)[1] for key, column in columns.items()
                    if key.startswith(f"{name}.") and key.count(".") == 2 and column["type"] in VOLATILE_TYPES]
        query = (f'SELECT (to_jsonb(t) - $1::text[])::text FROM "{schema}"."{table}" t')
        rows[name] = sorted(r[0] for r in await conn.fetch(query, volatile))
    return rows


def differences(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], names: tuple[str, str] = ("a", "b"),
                ) -> list[str]:
    """What differs between two catalogues, one line (or one small diff) per object; empty when they are equal."""
    found: list[str] = []
    for section in sorted(set(a) | set(b)):
        left, right = a.get(section, {}), b.get(section, {})
        for key in sorted(set(left) | set(right)):
            if key not in right:
                found.append(f"{section}: {key} only in {names[0]}: {left[key]!r}")
            elif key not in left:
                found.append(f"{section}: {key} only in {names[1]}: {right[key]!r}")
            elif left[key] != right[key]:
                found.append(f"{section}: {key} differs:\n" + _diff(left[key], right[key], names))
    return found


def _diff(left: Any, right: Any, names: tuple[str, str]) -> str:
    if isinstance(left, dict) and isinstance(right, dict):
        lines = []
        for field in sorted(set(left) | set(right)):
            if left.get(field) != right.get(field):
                lines.append(f"  {field}:\n" + _diff(left.get(field), right.get(field), names))
        return "\n".join(lines)
    if isinstance(left, str) and isinstance(right, str) and ("\n" in left or "\n" in right):
        return "\n".join(difflib.unified_diff(left.splitlines(), right.splitlines(), names[0], names[1], lineterm=""))
    return f"    {names[0]}: {left!r}\n    {names[1]}: {right!r}"
