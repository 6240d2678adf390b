"""Operator commands of `spendgate`: the same operations as the admin API, run in-process against the database.

Each command is one admin API call made through the admin app itself (over an in-process ASGI transport), so the
CLI validates and answers exactly like the API: `spendgate credits topup acme 50` is
`POST /admin/accounts/acme/credits/topups {"amount_usd": "50", "idempotency_key": ...}`. Whoever can reach the
database is already an operator, so the CLI needs no admin token. Output is the API's JSON `result`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from typing import Any

from gateway.settings import Settings

Call = tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]  # method, path, body, query


def _calls(args: argparse.Namespace) -> Call:
    a = getattr(args, "account", None)
    match args.command, getattr(args, "action", None):
        case "accounts", "list":
            return "GET", "/accounts", None, {"limit": args.limit}
        case "accounts", "create":
            return "POST", "/accounts", {"id": a}, None
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
            query = {k: v for k, v in (("from", args.start), ("to", args.end), ("limit", args.limit)) if v}
            return "GET", f"/accounts/{a}/credits/statement", None, query
        case "billing", "spending-limit":
            if args.off:
                return "DELETE", f"/accounts/{a}/billing/spending-limit", None, None
            if args.amount is None:
                return "GET", f"/accounts/{a}/billing/spending-limit", None, None
            body = {"amount_usd": args.amount, "duration": args.duration, "strategy": args.strategy}
            return "PUT", f"/accounts/{a}/billing/spending-limit", body, None
        case "limits" | "policies" | "routes", action:
            return _gateway_call(args, action)
    raise SystemExit(f"unknown command {args.command} {getattr(args, 'action', '')}")


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"not JSON: {exc}") from None


def _gateway_call(args: argparse.Namespace, action: str | None) -> Call:
    base = f"/accounts/{args.account}/gateways/{args.gateway}"
    collection = {"limits": "spend-limits", "policies": "policies", "routes": "routes"}[args.command]
    match action:
        case "list":
            return "GET", f"{base}/{collection}", None, None
        case "create" if args.command == "routes":
            return "POST", f"{base}/routes", {"name": args.name, "graph": _json_arg(args.json)}, None
        case "create":
            return "POST", f"{base}/{collection}", _json_arg(args.json), None
        case "replace":
            return "PUT", f"{base}/{collection}/{args.id}", _json_arg(args.json), None
        case "delete":
            return "DELETE", f"{base}/{collection}/{args.id}", None, None
        case "versions":
            return "GET", f"{base}/routes/{args.name}/versions", None, None
        case "add-version":
            return "POST", f"{base}/routes/{args.name}/versions", {"graph": _json_arg(args.json)}, None
        case "deploy":
            return "POST", f"{base}/routes/{args.name}/deploy", {"version": args.version}, None
    raise SystemExit(f"unknown command {args.command} {action}")


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    accounts = sub.add_parser("accounts", help="tenant accounts").add_subparsers(dest="action", required=True)
    p = accounts.add_parser("list")
    p.add_argument("--limit", type=int, default=500)
    accounts.add_parser("create").add_argument("account")

    credits = sub.add_parser("credits", help="credit balance, top-ups, auto top-up, statement")
    actions = credits.add_subparsers(dest="action", required=True)
    actions.add_parser("show").add_argument("account")
    p = actions.add_parser("topup", help="spendgate credits topup acme 50 [--idempotency-key K]")
    p.add_argument("account")
    p.add_argument("amount", help="USD, e.g. 50 or 12.50")
    p.add_argument("--idempotency-key", help="repeat it to make a retry safe (default: a new key)")
    p = actions.add_parser("auto-topup", help="--threshold 10 --amount 50, or --off")
    p.add_argument("account")
    p.add_argument("--threshold")
    p.add_argument("--amount")
    p.add_argument("--off", action="store_true")
    p = actions.add_parser("statement")
    p.add_argument("account")
    p.add_argument("--from", dest="start")
    p.add_argument("--to", dest="end")
    p.add_argument("--limit", type=int, default=500)

    billing = sub.add_parser("billing", help="account-level spending limit").add_subparsers(dest="action",
                                                                                            required=True)
    p = billing.add_parser("spending-limit", help="show; or --amount 100 --duration daily [--strategy sliding]; --off")
    p.add_argument("account")
    p.add_argument("--amount")
    p.add_argument("--duration", choices=("daily", "weekly", "monthly"), default="monthly")
    p.add_argument("--strategy", choices=("fixed", "sliding"), default="fixed")
    p.add_argument("--off", action="store_true")

    def gateway_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("account")
        p.add_argument("gateway")
        return p

    limits = sub.add_parser("limits", help="spend-limit rules of a gateway")
    actions = limits.add_subparsers(dest="action", required=True)
    gateway_args(actions.add_parser("list", help="rules with each bucket's spend"))
    gateway_args(actions.add_parser("create", help="limits create acme prod --json '{\"name\": ...}'")).add_argument(
        "--json", required=True)
    p = gateway_args(actions.add_parser("replace"))
    p.add_argument("id")
    p.add_argument("--json", required=True)
    gateway_args(actions.add_parser("delete")).add_argument("id")

    policies = sub.add_parser("policies", help="which models each IdP group may call")
    actions = policies.add_subparsers(dest="action", required=True)
    gateway_args(actions.add_parser("list"))
    gateway_args(actions.add_parser("create", help='--json \'{"group": "interns", "models": ["groq/*"]}\'')
                 ).add_argument("--json", required=True)
    gateway_args(actions.add_parser("delete")).add_argument("id")

    routes = sub.add_parser("routes", help="dynamic routes and their versions")
    actions = routes.add_subparsers(dest="action", required=True)
    gateway_args(actions.add_parser("list"))
    for name in ("create", "add-version"):
        p = gateway_args(actions.add_parser(name, help="--json is the graph {\"start\", \"elements\"}"))
        p.add_argument("name")
        p.add_argument("--json", required=True)
    gateway_args(actions.add_parser("versions")).add_argument("name")
    p = gateway_args(actions.add_parser("deploy"))
    p.add_argument("name")
    p.add_argument("version", type=int)

    token = sub.add_parser("admin-token", help="the admin API token").add_subparsers(dest="action", required=True)
    token.add_parser("rotate", help="replace the stored admin token and print the new one once")

    for name in ("accounts", "credits", "billing", "limits", "policies", "routes", "admin-token"):
        sub.choices[name].set_defaults(func=run_command)


def run_command(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(_run(args, settings))


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    from gateway.admin.api import create_admin_app
    from gateway.admin.app import ROUTERS
    from gateway.admin.token import rotate_admin_token
    from gateway.services import Services

    services = Services(settings, background=False)
    await services.start()
    try:
        if args.command == "admin-token":
            print(await rotate_admin_token(services.db))
            return 0
        method, path, body, query = _calls(args)

        async def operator(token: str | None) -> bool:
            return True

        app = create_admin_app(ROUTERS, services, operator)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cli") as client:
            response = await client.request(method, path, json=body, params=query)
        payload = response.json()
        if not payload.get("success"):
            error = payload["error"]
            field = f" ({error['field']})" if error.get("field") else ""
            print(f"error {response.status_code}: {error['message']}{field}", file=sys.stderr)
            return 1
        print(json.dumps(payload["result"], indent=2))
        return 0
    finally:
        await services.stop()
