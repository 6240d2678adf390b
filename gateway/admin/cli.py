"""Operator commands of `spendgate`: the same operations as the admin API, run in-process against the database.

Each command is one admin API call made through the admin app itself (an in-process ASGI call), so the CLI
validates and answers exactly like the API: `spendgate credits topup acme 50` is
`POST /admin/accounts/acme/credits/topups {"amount_usd": "50", "idempotency_key": ...}`. Whoever can reach the
database is already an operator, so the CLI needs no admin token.

Output: lists print an aligned table and single objects aligned `name  value` lines; `--json` on those commands
prints the API's JSON `result` instead. Commands that change something print the API's JSON `result`. Errors print
`error <status>: message (field)` on stderr and exit 1. Which database is used, and when it is refused (none yet,
not migrated), is gateway/admin/cli_db.py; this module imports nothing heavy until a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, unquote, urlencode

from gateway.admin.cli_output import Column, cell, field, pretty_json, record, table
from gateway.errors import CliError
from gateway.settings import Settings

Call = tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]  # method, path, body, query


class Parser(argparse.ArgumentParser):
    """argparse, with an epilog that may be computed when the help is printed (`epilog_source`), so that one
    command's help can describe what another module defines without `spendgate --help` importing it."""

    epilog_source: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.epilog_source is not None:
            self.epilog = self.epilog_source()
        return super().format_help()


# -- the shapes shown by `create --help` (the tests create each example through the CLI) -------------------------

RULE_EXAMPLE: dict[str, Any] = {
    "name": "per-user-monthly",
    "budget_usd": "50.00",
    "window": "monthly",
    "window_type": "rolling",
    "scope": {"metadata.user_id": {"split": True}, "provider": {"equals": "openai"}},
    "action": {"fallback_model": "groq/llama-3.1-8b-instant"},
    "alert_at": [0.5, 0.9],
}
RULE_HELP = f"""\
a rule (the JSON of --json), for example:
{json.dumps(RULE_EXAMPLE, indent=2)}

fields:
  name         required, 1-100 characters
  budget_usd   required, a decimal string of USD ("50.00")
  window       required: daily | weekly | monthly
  window_type  fixed (calendar windows in UTC; the default) | rolling (the last day, 7 days or 30 days)
  scope        {{dimension: {{"split": true}} | {{"equals": value}}}}, default {{}} (one budget for the gateway);
               split: one budget per distinct value; equals: the rule counts only requests with that value.
               dimensions: provider, model ("provider/model"), metadata.<key>, cf.user_id, cf.user.email,
               cf.user.groups, cf.service_token
  action       "block" (refuse with 429; the default) | "monitor" (count only) |
               {{"fallback_model": "provider/model"}} (send the request to that model instead)
  alert_at     up to 10 fractions of the budget in (0, 1], e.g. [0.5, 0.9]: a POST to the gateway's
               alert_webhook when a bucket's spend crosses each

example:
  spendgate limits create acme prod --json '{{"name": "team", "budget_usd": "100", "window": "daily"}}'
"""

POLICY_EXAMPLE: dict[str, Any] = {"group": "interns", "models": ["groq/*", "openai/gpt-4o-mini"]}
POLICY_HELP = f"""\
a policy (the JSON of --json), for example:
{json.dumps(POLICY_EXAMPLE)}

fields:
  group   an identity-provider group (cf.user.groups); "*" governs requests that carry no group
  models  "provider/model" patterns with shell wildcards ("groq/*", "custom-*/*"): what the group may call.
          A gateway without policies restricts nobody; a group without a policy is unrestricted.
"""

ROUTE_EXAMPLE: dict[str, Any] = {
    "start": "tier",
    "elements": [
        {"id": "tier", "type": "conditional", "field": "metadata.tier", "equals": "pro", "true": "split",
         "false": "cheap"},
        {"id": "split", "type": "percentage", "branches": [{"percent": 80, "next": "budget"},
                                                           {"percent": 20, "next": "cheap"}]},
        {"id": "budget", "type": "budget", "rule": "per-user-monthly", "success": "big", "fallback": "cheap"},
        {"id": "big", "type": "model", "model": "openai/gpt-4o", "timeout_ms": 20000, "retries": 1,
         "success": "done", "fallback": "cheap"},
        {"id": "cheap", "type": "model", "model": "groq/llama-3.1-8b-instant", "success": "done"},
        {"id": "done", "type": "end"},
    ],
}
ROUTE_HELP = f"""\
a route's graph (the JSON of --json): {{"start": element id, "elements": [...]}}, for example:
{json.dumps(ROUTE_EXAMPLE, indent=2)}

elements (each with a unique "id"):
  conditional  {{"field": "metadata.<key>" | "cf.user.groups" | ..., "equals": v, "true": id, "false": id}}
               (on a list field, equals means contains)
  percentage   {{"branches": [{{"percent": 80, "next": id}}, ...]}}, percents summing to 100
  budget       {{"rule": "<spend-limit rule name>", "success": id, "fallback": id}}: success while the rule's
               bucket for the request has budget left
  model        {{"model": "provider/model", "timeout_ms": n, "retries": 0-4, "success": id, "fallback": id}}
               (fallback on a connection error, timeout, 429 or 5xx); a model's success path reaches no other model
  end          {{}}
The graph may not loop. The first version is deployed; `routes add-version` saves another, `routes deploy` picks one.
"""

# One line per gateway setting for `gateways create --help`; tests check every setting has one.
SETTING_HELP = {
    "authentication": "require a gateway token (`spendgate tokens`) or an Access JWT",
    "zdr": "zero data retention for unified billing (through SPENDGATE_UPSTREAM_<P>_ZDR)",
    "collect_logs": "write a request log row for each request",
    "log_payloads": "keep request and response bodies in the log",
    "byok_only": "refuse unified billing: requests bring a key or use a stored one",
    "allow_custom_cost": "let clients set the cost with cf-aig-custom-cost (never on unified billing)",
    "require_identity": "refuse requests without a verified identity (Access JWT)",
    "log_retention": '{"max_rows": N, "strategy": "STOP_INSERTING" | "DELETE_OLDEST"}, or null',
    "alert_webhook": "http(s) URL that receives the spend-limit alerts (alert_at), or null",
    "block_unpriced": "refuse models without a known price, BYOK included",
    "default_max_output_tokens": "output tokens reserved for a request that sets no output limit",
    "inject_max_tokens": "write default_max_output_tokens into requests that set no output limit",
    "cache_ttl": "seconds an answer is served from the response cache, or null (off)",
    "cache_scope": '"gateway": every caller shares the cache; "identity": each verified caller has its own',
    "cache_hit_charge": 'unified billing: the fraction of the original cost a cache hit is charged, e.g. "0.25"',
    "cache_max_mb": "the response cache's size bound for this gateway (the oldest answers go first)",
    "guardrails": '{"prompt": {"pii.*": "redact", "secret.*": "block"}, "response": {...}}: flag|redact|block',
    "rate_limits": '[{"name": "burst", "limit": 40, "interval_s": 60, "technique": "fixed|sliding", '
                   '"unit": "requests|tokens", "scope": {...}}]',
}


def settings_help() -> str:
    from gateway.gateways import GatewaySettings

    defaults = GatewaySettings().to_json()
    width = max(len(n) for n in defaults)
    lines = [f"  {name.ljust(width)}  {json.dumps(value):<6}  {SETTING_HELP.get(name, '')}".rstrip()
             for name, value in defaults.items()]
    example = json.dumps({"authentication": True, "byok_only": True})
    return ("settings (--json takes any of them; the others keep the default shown):\n" + "\n".join(lines) +
            f"\n\nexample:\n  spendgate gateways create acme prod --json '{example}'\n")


# -- from arguments to one admin API call --------------------------------------------------------------------------


def _seg(value: str) -> str:
    """A path segment from an argument: `/` in it cannot reach another endpoint."""
    return quote(value, safe="")


def _json_arg(text: str | None, what: str = "--json") -> Any:
    try:
        return json.loads(text or "")
    except ValueError as exc:
        raise CliError(f"{what} is not JSON: {exc}") from None


def _json_object(text: str | None) -> dict[str, Any]:
    value = _json_arg(text)
    if not isinstance(value, dict):
        raise CliError("--json must be a JSON object")
    return value


def _page(args: argparse.Namespace, **query: Any) -> dict[str, Any]:
    query.update(limit=getattr(args, "limit", None), cursor=getattr(args, "cursor", None))
    return {k: v for k, v in query.items() if v not in (None, "")}


def _calls(args: argparse.Namespace) -> Call:
    a = _seg(getattr(args, "account", None) or "")
    match args.command, args.action:
        case "accounts", "list":
            return "GET", "/accounts", None, _page(args)
        case "accounts", "create":
            return "POST", "/accounts", {"id": args.account}, None
        case "credits", "show":
            return "GET", f"/accounts/{a}/credits", None, None
        case "credits", "topup":
            key = args.idempotency_key or f"cli-{uuid.uuid4()}"
            return "POST", f"/accounts/{a}/credits/topups", {"amount_usd": args.amount, "idempotency_key": key}, None
        case "credits", "auto-topup":
            if args.off:
                return "DELETE", f"/accounts/{a}/credits/auto-topup", None, None
            body = {"threshold_usd": args.threshold, "amount_usd": args.amount}
            return "PUT", f"/accounts/{a}/credits/auto-topup", body, None
        case "credits", "statement":
            return "GET", f"/accounts/{a}/credits/statement", None, _page(args, **{"from": args.start, "to": args.end})
        case "billing", "spending-limit":
            if args.off:
                return "DELETE", f"/accounts/{a}/billing/spending-limit", None, None
            if args.amount is None:
                return "GET", f"/accounts/{a}/billing/spending-limit", None, None
            body = {"amount_usd": args.amount, "duration": args.duration, "strategy": args.strategy}
            return "PUT", f"/accounts/{a}/billing/spending-limit", body, None
        case "gateways", action:
            return _gateway(args, a, action)
        case "cache", "purge":
            return "DELETE", f"/accounts/{a}/gateways/{_seg(args.gateway)}/cache", None, None
        case "report", action:
            return _report(args, a, action)
        case "limits" | "policies" | "routes" | "tokens" | "keys" | "logs", action:
            return _in_gateway(args, f"/accounts/{a}/gateways/{_seg(args.gateway)}", action)
    raise CliError(f"unknown command {args.command} {args.action}")


def _gateway(args: argparse.Namespace, a: str, action: str) -> Call:
    if action == "list":
        return "GET", f"/accounts/{a}/gateways", None, _page(args)
    path = f"/accounts/{a}/gateways/{_seg(args.gateway)}"
    match action:
        case "show":
            return "GET", path, None, None
        case "rate-limits":
            return "GET", f"{path}/rate-limits", None, None
        case "create":
            settings = _json_object(args.json) if args.json is not None else {}
            return "POST", f"/accounts/{a}/gateways", {**settings, "id": args.gateway}, None
        case "update":
            return "PATCH", path, _json_object(args.json), None
        case "delete":
            return "DELETE", path, None, None
    raise CliError(f"unknown command gateways {action}")


def _report(args: argparse.Namespace, a: str, action: str) -> Call:
    match action:
        case "spend":
            query = {"group_by": args.by, "from": args.start, "to": args.end, "gateway": args.gateway,
                     "interval": args.interval, "limit": args.limit}
            return "GET", f"/accounts/{a}/analytics", None, {k: v for k, v in query.items() if v not in (None, "")}
        case "forecasts":
            return "GET", f"/accounts/{a}/gateways/{_seg(args.gateway)}/spend-limits", None, {"limit": 500}
        case "anomalies":
            query = {"from": args.start, "to": args.end, "gateway": args.gateway}
            return "GET", f"/accounts/{a}/analytics/anomalies", None, {k: v for k, v in query.items() if v}
    raise CliError(f"unknown command report {action}")


def _forecast(row: dict[str, Any]) -> str:
    fc = row.get("forecast") or {}
    out = cell(fc.get("exhausted_at")) if fc.get("exhausted_at") else "not within the horizon"
    return f"{fc.get('rate_usd_per_day')} USD/day, runs out {out}"


def _spend(result: dict[str, Any]) -> str:
    """Groups by cost (each series point a line when there is one), the totals, the forecast."""
    names = list(dict.fromkeys(k for g in result["groups"] for k in g["key"] if k != "other"))  # group_by order
    figures: list[Column] = [("REQUESTS", field("requests")), ("ERRORS", field("errors")),
                             ("TOKENS IN", field("tokens_in")), ("TOKENS OUT", field("tokens_out")),
                             ("COST USD", field("cost_usd"))]

    def key_column(name: str) -> Column:
        return (name.upper(), lambda r: "(other)" if r["key"].get("other") else r["key"].get(name))

    rows: list[dict[str, Any]] = []
    for group in result["groups"]:
        rows += ([{**group, **p, "start": p["start"]} for p in group["series"] if p["requests"]]
                 if "series" in group else [group])
    series: list[Column] = [("START", field("start"))] if result.get("interval") else []
    text = table(rows, [*(key_column(n) for n in names), *series, *figures])
    totals, fc = result["totals"], result.get("forecast") or {}
    text += (f"\n\ntotal {totals['cost_usd']} USD, {totals['requests']} requests ({totals['errors']} errors), "
             f"{result['from']} to {result['to']}")
    if fc:
        text += f"\nforecast: {_forecast(result)} ({fc.get('method')})"
    return text


def _forecasts(rows: list[dict[str, Any]]) -> str:
    buckets = [{"rule": r.get("name"), "budget_usd": r.get("budget_usd"), "window": r.get("window"), **b}
               for r in rows for b in r.get("buckets") or []]
    return table(buckets, [("RULE", field("rule")), ("BUCKET", field("key")), ("WINDOW", field("window")),
                           ("BUDGET USD", field("budget_usd")), ("SPENT USD", field("spent_usd")),
                           ("REMAINING USD", field("remaining_usd")),
                           ("RATE USD/DAY", lambda b: (b.get("forecast") or {}).get("rate_usd_per_day")),
                           ("RUNS OUT", lambda b: (b.get("forecast") or {}).get("exhausted_at") or "not this window")])


def _anomalies(result: dict[str, Any]) -> str:
    t = result["thresholds"]
    return table(result["anomalies"], [
        ("DAY", field("day")), ("IDENTITY", lambda r: ", ".join(f"{k}={v}" for k, v in r["identity"].items())),
        ("COST USD", field("cost_usd")), ("REQUESTS", field("requests")), ("OWN P95 USD", field("identity_p95_usd")),
        ("ACCOUNT P99 USD", field("account_p99_usd"))]) + (
        f"\n\nflagged: a day's cost above {t['identity_multiple']} x the identity's p95 over {t['baseline_days']} "
        f"days and above the account's p99 ({result['from']} to {result['to']}); flags never block")


COLLECTIONS = {"limits": "spend-limits", "policies": "policies", "routes": "routes", "tokens": "tokens",
               "keys": "provider-keys", "logs": "logs"}


def _in_gateway(args: argparse.Namespace, base: str, action: str) -> Call:
    collection = f"{base}/{COLLECTIONS[args.command]}"
    match args.command, action:
        case _, "list" if args.command == "logs":
            filters = {"provider": args.provider, "model": args.model, "status_code": args.status,
                       "from": args.start, "to": args.end, "guardrail": args.guardrail}
            return "GET", collection, None, _page(args, **filters)
        case _, "list":
            return "GET", collection, None, _page(args)
        case "routes", "create":
            return "POST", collection, {"name": args.name, "graph": _json_arg(args.json)}, None
        case "routes", "show":
            return "GET", f"{collection}/{_seg(args.name)}", None, None
        case "routes", "versions":
            return "GET", f"{collection}/{_seg(args.name)}/versions", None, _page(args)
        case "routes", "add-version":
            return "POST", f"{collection}/{_seg(args.name)}/versions", {"graph": _json_arg(args.json)}, None
        case "routes", "deploy":
            return "POST", f"{collection}/{_seg(args.name)}/deploy", {"version": args.version}, None
        case "tokens", "create":
            return "POST", collection, {"name": args.name}, None
        case "keys", "add":
            return "POST", collection, {"provider": args.provider, "alias": args.alias, "key": _secret(args)}, None
        case _, "create":
            return "POST", collection, _json_arg(args.json), None
        case _, "replace":
            return "PUT", f"{collection}/{_seg(args.id)}", _json_arg(args.json), None
        case _, "show":
            return "GET", f"{collection}/{_seg(args.id)}", None, None
        case _, "delete" | "revoke":
            return "DELETE", f"{collection}/{_seg(args.id)}", None, None
    raise CliError(f"unknown command {args.command} {action}")


def _secret(args: argparse.Namespace) -> str:
    """A provider key from an environment variable or standard input, never from the command line (where `ps`
    and the shell history would show it)."""
    if args.key_env:
        value = os.environ.get(args.key_env, "")
        if not value.strip():
            raise CliError(f"the environment variable {args.key_env} is not set or empty")
    elif sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"{args.provider} key (not echoed): ")
    else:
        value = sys.stdin.read()
    value = value.strip()
    if not value:
        raise CliError("no key on standard input")
    return value


# -- how read commands print ---------------------------------------------------------------------------------------


def _gateway_settings(row: dict[str, Any]) -> str:
    from gateway.gateways import GatewaySettings

    defaults = GatewaySettings().to_json()
    changed = [f"{k}={json.dumps(row[k], separators=(',', ':'))}" for k in defaults
               if k in row and row[k] != defaults[k]]
    return ", ".join(changed) or "(defaults)"


def _rules(rows: list[dict[str, Any]]) -> str:
    def action(r: dict[str, Any]) -> str:
        act = r.get("action", "block")
        return f"fallback {act.get('fallback_model')}" if isinstance(act, dict) else str(act)

    rules = table(rows, [("ID", field("id")), ("NAME", field("name")), ("BUDGET USD", field("budget_usd")),
                         ("WINDOW", lambda r: f"{r.get('window')} {r.get('window_type', 'fixed')}"),
                         ("ACTION", action), ("SCOPE", lambda r: r.get("scope") or None),
                         ("ALERT AT", lambda r: ",".join(str(a) for a in r.get("alert_at") or []))])
    buckets = [{"rule": r.get("name"), **b} for r in rows for b in r.get("buckets") or []]
    if not buckets:
        return rules
    return rules + "\n\nbuckets (current window):\n" + table(buckets, [
        ("RULE", field("rule")), ("BUCKET", field("key")), ("WINDOW START", field("window_start")),
        ("SPENT USD", field("spent_usd")), ("PENDING USD", field("pending_usd")),
        ("REMAINING USD", field("remaining_usd"))])


def _rate_limits(result: dict[str, Any]) -> str:
    rows = result.get("rate_limits") or []
    if not rows:
        return "no rate limits"
    rules = table(rows, [("NAME", field("name")), ("LIMIT", field("limit")), ("UNIT", field("unit")),
                         ("INTERVAL", lambda r: f"{r.get('interval_s')} s {r.get('technique')}"),
                         ("SCOPE", lambda r: r.get("scope") or None)])
    buckets = [{"rule": r.get("name"), **b} for r in rows for b in r.get("buckets") or []]
    if not buckets:
        return rules + "\n\nnothing counted in the current intervals"
    return rules + "\n\nbuckets (now):\n" + table(buckets, [
        ("RULE", field("rule")), ("BUCKET", field("key")), ("COUNTED", field("counted")),
        ("PENDING", field("pending")), ("REMAINING", field("remaining")), ("FREES AT", field("frees_at"))])


def _table(*columns: Column) -> Callable[[Any], str]:
    return lambda rows: table(rows, columns)


CREATED: Column = ("CREATED", field("created_at"))
LOG_COLUMNS: tuple[Column, ...] = (
    ("TIME", field("created_at")), ("STATUS", field("status_code")), ("PROVIDER", field("provider")),
    ("MODEL", field("model")), ("TOKENS IN/OUT", lambda r: f"{cell(r.get('tokens_in'))}/{cell(r.get('tokens_out'))}"),
    ("COST USD", field("cost_usd")), ("PAID BY", field("billing_mode")), ("GUARDRAILS", lambda r: _guardrails(r)),
    ("ID", field("id")))


def _guardrails(row: dict[str, Any]) -> str | None:
    """`prompt:pii.email=redact response:secret.aws=block`: what the guardrails found, never the text."""
    found = row.get("guardrails") or {}
    return " ".join(f"{side}:{category}={action}" for side, categories in found.items()
                    for category, action in categories.items()) or None


# (command, action) -> how its GET result prints without --json
VIEWS: dict[tuple[str, str], Callable[[Any], str]] = {
    ("accounts", "list"): _table(("ID", field("id")), CREATED),
    ("credits", "show"): record,
    ("credits", "statement"): _table(("TIME", field("created_at")), ("CODE", field("code")),
                                     ("AMOUNT USD", field("amount_usd")), ("REQUEST", field("request_id")),
                                     ("ID", field("id"))),
    ("billing", "spending-limit"): lambda r: record(r) if r else "no spending limit",
    ("gateways", "list"): _table(("ID", field("id")), ("SETTINGS", _gateway_settings), CREATED),
    ("gateways", "show"): record,
    ("gateways", "rate-limits"): _rate_limits,
    ("limits", "list"): _rules,
    ("limits", "show"): lambda r: _rules([r]),
    ("policies", "list"): _table(("ID", field("id")), ("GROUP", field("group")),
                                 ("MODELS", lambda r: ", ".join(r.get("models") or []))),
    ("routes", "list"): _table(("NAME", field("name")), ("DEPLOYED", field("deployed_version")),
                               ("LATEST", field("latest_version")), CREATED),
    ("routes", "show"): record,
    ("routes", "versions"): _table(("VERSION", field("version")), ("DEPLOYED", field("deployed")), CREATED,
                                   ("ELEMENTS", lambda r: len((r.get("graph") or {}).get("elements") or []))),
    ("tokens", "list"): _table(("ID", field("id")), ("NAME", field("name")), CREATED),
    ("keys", "list"): _table(("ID", field("id")), ("PROVIDER", field("provider")), ("ALIAS", field("alias")),
                             ("KEY", lambda r: "..." + str(r.get("key_last4"))), CREATED),
    ("logs", "list"): _table(*LOG_COLUMNS),
    ("logs", "show"): record,
    ("report", "spend"): _spend,
    ("report", "forecasts"): _forecasts,
    ("report", "anomalies"): _anomalies,
}


# -- the parser ------------------------------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="do not print the `database: ...` line on stderr")
    raw = argparse.ArgumentParser(add_help=False)
    raw.add_argument("--json", dest="raw", action="store_true", help="print the API's JSON result, not a table")
    paged = argparse.ArgumentParser(add_help=False)
    paged.add_argument("--limit", type=int, help="rows per page (1-500; the API's default: 100)")
    paged.add_argument("--cursor", help="the next page: the cursor a previous page printed")
    reading, listing = [quiet, raw], [quiet, raw, paged]
    raw_text = argparse.RawDescriptionHelpFormatter

    def group(name: str, help: str) -> argparse._SubParsersAction:  # type: ignore[type-arg]
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=run_command)
        actions: argparse._SubParsersAction = p.add_subparsers(  # type: ignore[type-arg]
            dest="action", required=True, metavar="ACTION")
        return actions

    def gateway_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("account")
        p.add_argument("gateway")
        return p

    accounts = group("accounts", "tenant accounts")
    accounts.add_parser("list", parents=listing, help="every account")
    accounts.add_parser("create", parents=[quiet], help="a new account (with its `default` gateway)"
                        ).add_argument("account")

    credits = group("credits", "credit balance, top-ups, auto top-up, statement")
    credits.add_parser("show", parents=reading, help="balance, pending holds, auto top-up").add_argument("account")
    p = credits.add_parser("topup", parents=[quiet], help="spendgate credits topup acme 50 [--idempotency-key K]")
    p.add_argument("account")
    p.add_argument("amount", help="USD, e.g. 50 or 12.50")
    p.add_argument("--idempotency-key", help="repeat it to make a retry safe (default: a new key)")
    p = credits.add_parser("auto-topup", parents=[quiet], help="--threshold 10 --amount 50, or --off")
    p.add_argument("account")
    p.add_argument("--threshold")
    p.add_argument("--amount")
    p.add_argument("--off", action="store_true")
    p = credits.add_parser("statement", parents=listing, help="posted transfers, newest first")
    p.add_argument("account")
    p.add_argument("--from", dest="start", help="ISO 8601 time with a zone (inclusive)")
    p.add_argument("--to", dest="end", help="ISO 8601 time with a zone (exclusive)")

    billing = group("billing", "account-level spending limit")
    p = billing.add_parser("spending-limit", parents=reading,
                           help="show; or --amount 100 --duration daily [--strategy rolling]; --off")
    p.add_argument("account")
    p.add_argument("--amount")
    p.add_argument("--duration", choices=("daily", "weekly", "monthly"), default="monthly")
    p.add_argument("--strategy", choices=("fixed", "rolling"), default="fixed")
    p.add_argument("--off", action="store_true")

    gateways = group("gateways", "an account's gateways and their settings")
    gateways.add_parser("list", parents=listing, help="the account's gateways").add_argument("account")
    gateway_args(gateways.add_parser("show", parents=reading, help="one gateway's settings"))
    gateway_args(gateways.add_parser("rate-limits", parents=reading,
                                     help="the gateway's rate limits and what each bucket counts now"))
    for name, what in (("create", "a new gateway; --json sets some settings"),
                       ("update", "change some settings; the others are kept")):
        p = gateway_args(gateways.add_parser(name, parents=[quiet], help=what, description=what,
                                             formatter_class=raw_text))
        p.add_argument("--json", required=name == "update", metavar="SETTINGS", help="a JSON object of settings")
        assert isinstance(p, Parser)
        p.epilog_source = settings_help
    gateway_args(gateways.add_parser("delete", parents=[quiet], help="a gateway and its configuration"))

    cache = group("cache", "the response cache of a gateway")
    gateway_args(cache.add_parser("purge", parents=[quiet], help="delete every cached answer of the gateway"))

    limits = group("limits", "spend-limit rules of a gateway")
    gateway_args(limits.add_parser("list", parents=listing, help="rules, with each bucket's spend"))
    gateway_args(limits.add_parser("show", parents=reading, help="one rule and its buckets")).add_argument("id")
    p = gateway_args(limits.add_parser("create", parents=[quiet], help="a new rule (at most 20 per gateway)",
                                       description="Create a spend-limit rule.", epilog=RULE_HELP,
                                       formatter_class=raw_text))
    p.add_argument("--json", required=True, metavar="RULE", help="the rule, shape below")
    p = gateway_args(limits.add_parser("replace", parents=[quiet], help="replace a rule (its spend is kept)",
                                       epilog=RULE_HELP, formatter_class=raw_text))
    p.add_argument("id")
    p.add_argument("--json", required=True, metavar="RULE", help="the rule, shape below")
    gateway_args(limits.add_parser("delete", parents=[quiet], help="delete a rule")).add_argument("id")

    policies = group("policies", "which models each identity group may call")
    gateway_args(policies.add_parser("list", parents=listing, help="the gateway's policies"))
    gateway_args(policies.add_parser("create", parents=[quiet], help="allow a group some models",
                                     description="Create a policy.", epilog=POLICY_HELP, formatter_class=raw_text)
                 ).add_argument("--json", required=True, metavar="POLICY", help="the policy, shape below")
    gateway_args(policies.add_parser("delete", parents=[quiet], help="delete a policy")).add_argument("id")

    routes = group("routes", "dynamic routes and their versions")
    gateway_args(routes.add_parser("list", parents=listing, help="the gateway's routes"))
    gateway_args(routes.add_parser("show", parents=reading, help="a route's deployed graph")).add_argument("name")
    for name, what in (("create", "a new route; its first version is deployed"),
                       ("add-version", "save a new version of a route (not deployed)")):
        p = gateway_args(routes.add_parser(name, parents=[quiet], help=what, description=what, epilog=ROUTE_HELP,
                                           formatter_class=raw_text))
        p.add_argument("name")
        p.add_argument("--json", required=True, metavar="GRAPH", help="the graph, shape below")
    p = gateway_args(routes.add_parser("versions", parents=listing, help="every version of a route"))
    p.add_argument("name")
    p = gateway_args(routes.add_parser("deploy", parents=[quiet], help="deploy one version of a route"))
    p.add_argument("name")
    p.add_argument("version", type=int)

    tokens = group("tokens", "gateway tokens (cf-aig-authorization) for gateways with authentication on")
    gateway_args(tokens.add_parser("list", parents=listing, help="the gateway's tokens (never the secrets)"))
    p = gateway_args(tokens.add_parser("create", parents=reading, help="a new token; its secret is printed once"))
    p.add_argument("--name", required=True, help="what the token is for")
    gateway_args(tokens.add_parser("revoke", parents=[quiet], help="revoke a token")).add_argument("id")

    keys = group("keys", "provider keys stored for a gateway (BYOK without sending the key)")
    gateway_args(keys.add_parser("list", parents=listing, help="stored keys (only their last 4 characters)"))
    p = gateway_args(keys.add_parser(
        "add", parents=[quiet], help="store a key, read from stdin or an environment variable",
        description="Store a provider key. It is read from standard input (--key-stdin; typed without echo on a "
                    "terminal) or from an environment variable (--key-env), never from the command line.",
        epilog="examples:\n  printenv OPENAI_API_KEY | spendgate keys add acme prod --provider openai --key-stdin\n"
               "  spendgate keys add acme prod --provider anthropic --alias team-b --key-env ANTHROPIC_KEY\n"
               "requests pick a stored key with the cf-aig-byok-alias header (default: `default`)",
        formatter_class=raw_text))
    p.add_argument("--provider", required=True, help="openai, anthropic, google-ai-studio, grok, groq or custom-<slug>")
    p.add_argument("--alias", default="default")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--key-stdin", action="store_true", help="read the key from standard input")
    source.add_argument("--key-env", metavar="VAR", help="read the key from this environment variable")
    gateway_args(keys.add_parser("delete", parents=[quiet], help="delete a stored key")).add_argument("id")

    logs = group("logs", "request logs of a gateway, newest first")
    p = gateway_args(logs.add_parser("list", parents=listing, help="time, status, provider, model, tokens, cost, id"))
    p.add_argument("--provider")
    p.add_argument("--model")
    p.add_argument("--status", help="HTTP status code, e.g. 429")
    p.add_argument("--from", dest="start", help="ISO 8601 time with a zone (inclusive)")
    p.add_argument("--to", dest="end", help="ISO 8601 time with a zone (exclusive)")
    p.add_argument("--guardrail", metavar="CATEGORY", help="rows where a guardrail found it, e.g. pii.email")
    gateway_args(logs.add_parser("show", parents=reading, help="one log, every field")).add_argument("id")

    token = group("admin-token", "the admin API token")
    report = group("report", "spend by any dimension, forecasts, anomalies")
    p = report.add_parser("spend", parents=reading, help="spend by any dimension (default: the last 30 days)")
    p.add_argument("account")
    p.add_argument("--by", help="comma list: provider, model, gateway, billing_mode, status_code, cf.user_id, "
                                "cf.user.email, cf.user.groups, cf.service_token, metadata.<key>")
    p.add_argument("--from", dest="start", help="ISO 8601 start, e.g. 2026-11-01T00:00:00Z")
    p.add_argument("--to", dest="end", help="ISO 8601 end (exclusive)")
    p.add_argument("--gateway", help="one gateway (default: all)")
    p.add_argument("--interval", choices=("hour", "day", "week"), help="a line per group and step")
    p.add_argument("--limit", type=int, help="groups kept (default 50); the rest is one (other) line")
    p = report.add_parser("forecasts", parents=reading, help="every bucket of a gateway's rules, when it runs out")
    p.add_argument("account")
    p.add_argument("gateway")
    p = report.add_parser("anomalies", parents=reading, help="identities whose daily cost is unusual")
    p.add_argument("account")
    p.add_argument("--from", dest="start", help="first day (default: 6 days before --to)")
    p.add_argument("--to", dest="end", help="last day (default: today, UTC)")
    p.add_argument("--gateway", help="one gateway (default: all)")
    token.add_parser("rotate", parents=[quiet], help="replace the stored admin token and print the new one once")

    p = sub.add_parser("psql", parents=[quiet], help="psql on the gateway's database (the embedded one too)",
                       description="psql on the database the other commands use; with the embedded database, the "
                                   "psql that comes with its server binaries. Arguments after -- go to psql.",
                       epilog="example: spendgate psql -- -c 'SELECT * FROM reporting.balances'",
                       formatter_class=raw_text)
    p.add_argument("psql_args", nargs=argparse.REMAINDER, help="-- then psql's own arguments")
    p.set_defaults(func=run_psql)


# -- running a command -------------------------------------------------------------------------------------------


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from gateway.admin import cli_db

    try:
        call = None if args.command == "admin-token" else _calls(args)
        where = cli_db.target(settings)
        if where.embedded and not cli_db.embedded_exists(where.pgdata):
            raise cli_db.no_database(settings)
        if not getattr(args, "quiet", False):
            print(where.line(), file=sys.stderr, flush=True)
        return asyncio.run(_run(args, settings, cli_db.database_url(where), call))
    except CliError as exc:  # an operator's mistake (bad JSON, no key on stdin...), or no database
        print(f"error: {exc}", file=sys.stderr)
        return 1


def run_psql(args: argparse.Namespace, settings: Settings) -> int:
    """psql on the command's database, the password (if any) passed in PGPASSWORD rather than on psql's command
    line; not checked for migrations (psql is also how one looks at a database that is not)."""
    import shutil
    import subprocess
    from urllib.parse import urlsplit, urlunsplit

    from gateway.admin import cli_db

    try:
        where = cli_db.target(settings)
        if where.embedded and not cli_db.embedded_exists(where.pgdata):
            raise cli_db.no_database(settings)
        if not getattr(args, "quiet", False):
            print(where.line(), file=sys.stderr, flush=True)
        # the embedded server's own psql for it; for another server the system's, else that one
        system = shutil.which("psql")
        psql = (_bundled_psql() or system) if where.embedded else (system or _bundled_psql())
        if psql is None:
            raise CliError("psql not found: install the PostgreSQL client (e.g. apt-get install postgresql-client)")
        url = cli_db.database_url(where)
    except CliError as exc:  # an operator's mistake (bad JSON, no key on stdin...), or no database
        print(f"error: {exc}", file=sys.stderr)
        return 1
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password:
        env["PGPASSWORD"] = parts.password
        netloc = parts.netloc.rpartition("@")
        url = urlunsplit((parts.scheme, f"{parts.username}@{netloc[2]}", parts.path, parts.query, parts.fragment))
    extra = args.psql_args[1:] if args.psql_args[:1] == ["--"] else args.psql_args
    return subprocess.run([psql, url, *extra], env=env, check=False).returncode


def _bundled_psql() -> str | None:
    """The psql among the embedded server's binaries (the pgserver package), found without importing it."""
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        psql = Path(location) / "pginstall" / "bin" / "psql"
        if psql.is_file():
            return str(psql)
    return None


async def _run(args: argparse.Namespace, settings: Settings, url: str, call: Call | None) -> int:
    from gateway.admin.cli_db import OperatorServices, check_migrated, connect

    db = await connect(url)
    try:
        await check_migrated(db)
        if call is None:
            from gateway.admin.token import rotate_admin_token

            print(await rotate_admin_token(db))
            return 0
        from gateway.admin.api import create_admin_app
        from gateway.admin.app import ROUTERS

        async def operator(token: str | None) -> bool:
            return True

        services = OperatorServices(settings, db)
        app = create_admin_app(ROUTERS, lambda: services, operator)
        method, path, body, query = call
        status, raw_body = await asgi_call(app, method, path, body, query)
    finally:
        await db.close()
    return _print(args, method, status, json.loads(raw_body))


def _print(args: argparse.Namespace, method: str, status: int, payload: dict[str, Any]) -> int:
    if not payload.get("success"):
        error = payload["error"]
        where = f" ({error['field']})" if error.get("field") else ""
        print(f"error {status}: {error['message']}{where}", file=sys.stderr)
        return 1
    result = payload["result"]
    view = VIEWS.get((args.command, args.action)) if method == "GET" else None
    if (args.command, args.action) == ("tokens", "create") and not args.raw:
        if not getattr(args, "quiet", False):
            print(f"token {result['name']!r} created (id {result['id']}). Its secret, shown this once: store it now "
                  "and send it as `cf-aig-authorization: Bearer <secret>`, or where the provider key goes "
                  "(`Authorization: Bearer <secret>`, the SDK's api_key) when the call carries no key of its own:",
                  file=sys.stderr, flush=True)
        print(result["token"])
    elif view is None or getattr(args, "raw", False):
        print(pretty_json(result))
    else:
        print(view(result))
    cursor = (payload.get("result_info") or {}).get("next_cursor")
    if cursor:
        print(f"more: repeat with --cursor {cursor}", file=sys.stderr)
    return 0


async def asgi_call(app: Any, method: str, path: str, body: Any = None,
                    query: dict[str, Any] | None = None) -> tuple[int, bytes]:
    """One HTTP request to an ASGI app, in-process: (status, body)."""
    import asyncio

    payload = b"" if body is None else json.dumps(body).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": unquote(path), "raw_path": path.encode(), "root_path": "",
        "query_string": urlencode(query or {}).encode(), "client": ("127.0.0.1", 0), "server": ("cli", 80),
        "headers": [(b"host", b"cli"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode())],
    }
    status = 0
    chunks: list[bytes] = []
    request_sent = False
    response_done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await response_done.wait()  # a client disconnects only once it has the whole answer
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                response_done.set()

    await app(scope, receive, send)
    return status, b"".join(chunks)
