"""One error tree: every exception class of the gateway descends from `GatewayError`, the tree drawn in
gateway/errors.py is the tree that exists, domain errors carry no HTTP status, and `to_response` — the one
mapping to HTTP — answers each of them with the status, body and headers the API documents."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import pkgutil
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import gateway
from gateway import errors
from gateway.errors import (
    AccountLimitExceeded,
    AdminError,
    BillingRefused,
    BodyTooLarge,
    ClaimError,
    ClientLeft,
    CliError,
    CompatError,
    CompatUpstreamError,
    ConfigError,
    DatabaseUnavailable,
    EstimateTooLarge,
    GatewayError,
    GatewayTokenRejected,
    HeaderError,
    IdentityRejected,
    IdentityRequired,
    InsufficientCredit,
    InternalError,
    InvalidAmount,
    InvalidRequest,
    LedgerError,
    LedgerReason,
    LimitError,
    MetadataError,
    MethodNotAllowed,
    NestedTooDeep,
    NotFound,
    OwnKeyRequired,
    PolicyDenied,
    PolicyError,
    PromptBlocked,
    QueryError,
    RateLimitExceeded,
    ResponseBlocked,
    RouteError,
    RouteExists,
    RouteNotFound,
    RouteServedNothing,
    RuleBudgetExceeded,
    RuleError,
    SettingsError,
    TooManyRules,
    UnknownAccount,
    UnknownCustomProvider,
    UnknownDynamicRoute,
    UnknownGateway,
    UnknownProvider,
    UnpricedModel,
    UnsupportedEncoding,
    UpstreamBroke,
    UpstreamFailure,
    UpstreamNotJSON,
    UpstreamTimeout,
    UpstreamUnreachable,
    to_response,
)
from gateway.ledger import HoldRefusal

ROOT = Path(gateway.__file__).parent

# Exception classes outside the tree, each with the reason.
NOT_ERRORS = {
    "gateway.serve.Stopped": "a signal arriving (SIGINT / SIGTERM), not an error: a BaseException, so that no "
                             "`except Exception` on the way can swallow it",
}
# Classes of the tree that carry an HTTP status, each with the reason.
HTTP_EDGE = {
    AdminError: "raised only by the admin API's handlers, which are the HTTP edge and choose their answer",
}


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of the gateway (the migrations are Alembic's scripts)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if info.name.startswith("gateway.migrations"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, BaseException)
                    and value.__module__ == module.__name__):
                found[f"{module.__name__}.{name}"] = value
    return found


def _classes_in_source() -> set[str]:
    """Class names whose definition names an exception base, found by reading the source: the walk above must
    see each of them (a class defined inside a function would not be reachable by import)."""
    names = set()
    for path in ROOT.rglob("*.py"):
        if "migrations" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            named = [ast.unparse(base) for base in getattr(node, "bases", [])]
            if isinstance(node, ast.ClassDef) and any(
                    re.search(r"(Error|Exception|Refused|Failure|Exceeded)$", base) for base in named):
                names.add(node.name)
    return names


CLASSES = _exception_classes()


def test_the_walk_sees_every_exception_class_in_the_source() -> None:
    assert len(CLASSES) > 40
    assert _classes_in_source() <= {cls.__name__ for cls in CLASSES.values()}


@pytest.mark.parametrize("where", sorted(CLASSES))
def test_every_exception_class_is_in_the_tree(where: str) -> None:
    cls = CLASSES[where]
    if where in NOT_ERRORS:
        assert not issubclass(cls, Exception), "only a BaseException that is not an Exception may stay outside"
        return
    assert issubclass(cls, GatewayError), f"{where} does not descend from gateway.errors.GatewayError"
    assert cls.__module__ == "gateway.errors", f"{where}: the tree's classes are defined in gateway/errors.py"


@pytest.mark.parametrize("cls", [c for c in CLASSES.values() if issubclass(c, GatewayError)],
                         ids=lambda c: c.__name__)
def test_domain_errors_carry_no_http_status(cls: type[GatewayError]) -> None:
    if cls in HTTP_EDGE:
        return
    for klass in cls.__mro__:
        if klass.__module__ == "gateway.errors":
            assert "status" not in vars(klass) and "status" not in getattr(klass, "__annotations__", {})
            assert "status" not in inspect.signature(klass.__init__).parameters
            assert not re.search(r"\bself\.status\b", inspect.getsource(klass)), f"{klass.__name__} sets a status"


# -- the drawing -----------------------------------------------------------------------------------------------


def _drawn_tree() -> dict[str, str | None]:
    """Class name -> parent name, from the tree in the docstring of gateway/errors.py (4 columns a level)."""
    doc = errors.__doc__ or ""
    lines = doc[doc.index("    GatewayError"):].splitlines()
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in lines:
        match = re.match(r"    ([│├└─ ]*)([A-Z]\w+)", line)
        if match is None:
            break
        prefix, name = match.groups()
        assert len(prefix) % 4 == 0, f"misaligned: {line!r}"
        depth = len(prefix) // 4
        del stack[depth:]
        assert name not in parents, f"{name} is drawn twice"
        parents[name] = stack[-1] if stack else None
        stack.append(name)
    return parents


def test_the_drawn_tree_is_the_tree_that_exists() -> None:
    drawn = _drawn_tree()
    actual = {cls.__name__: cls for cls in CLASSES.values() if issubclass(cls, GatewayError)}
    assert set(drawn) == set(actual), (
        f"drawn but missing: {sorted(set(drawn) - set(actual))}; "
        f"missing from the drawing: {sorted(set(actual) - set(drawn))}")
    for name, parent in drawn.items():
        cls = actual[name]
        bases = [base.__name__ for base in cls.__bases__ if issubclass(base, GatewayError)]
        assert bases == ([parent] if parent else []), f"{name} is drawn under {parent}, but its bases are {bases}"


# -- the mapping -------------------------------------------------------------------------------------------------

T0 = datetime(2026, 11, 24, 15, 0, 0, 500000, tzinfo=UTC)
AMOUNTS = {"spent_nano": 200_000_000, "pending_nano": 50_000_000, "reserved_nano": 100_000_000,
           "limit_nano": 300_000_000}
AMOUNTS_USD = {"spent_usd": "0.20", "pending_usd": "0.05", "reserved_usd": "0.10", "limit_usd": "0.30"}

# (the error, status, the "error" object of the body, headers): one example of every class of the tree
CASES: list[tuple[GatewayError, int, dict[str, Any], dict[str, str]]] = [
    (InvalidRequest("the path contains a line feed"), 400, {"message": "the path contains a line feed"}, {}),
    (InvalidRequest("the request body is not valid for its Content-Encoding", header="content-encoding"), 400,
     {"message": "the request body is not valid for its Content-Encoding", "header": "content-encoding"}, {}),
    (HeaderError("cf-aig-zdr", "cf-aig-zdr must be true or false"), 400,
     {"message": "cf-aig-zdr must be true or false", "header": "cf-aig-zdr"}, {}),
    (LimitError("max_tokens", "max_tokens must be an integer from 1 to 10000000"), 400,
     {"message": "max_tokens must be an integer from 1 to 10000000", "param": "max_tokens"}, {}),
    (MetadataError("cf-aig-metadata must be a JSON object"), 400,
     {"message": "cf-aig-metadata must be a JSON object", "header": "cf-aig-metadata"}, {}),
    (NestedTooDeep(64), 400, {"message": "the JSON body nests deeper than 64 levels"}, {}),
    (CompatError("tools must be a list", "tools"), 400, {"message": "tools must be a list", "param": "tools"}, {}),
    (UnknownProvider("acme"), 400, {"message": "unknown provider 'acme'"}, {}),
    (BillingRefused("groq", "cf-aig-no-wholesale is set and no groq key was sent or stored"), 400,
     {"message": "cf-aig-no-wholesale is set and no groq key was sent or stored"}, {}),
    (UnpricedModel("openai", "gpt-x", "model 'gpt-x' of openai has no known price"), 400,
     {"message": "model 'gpt-x' of openai has no known price"}, {}),
    (EstimateTooLarge(2 * 10**18, 10**18, "the worst-case cost of this request is past what one call may reserve"),
     400, {"message": "the worst-case cost of this request is past what one call may reserve"}, {}),
    (BodyTooLarge(1024), 413, {"message": "request body exceeds 1024 bytes"}, {}),
    (BodyTooLarge(1024, decoded=True), 413, {"message": "request body exceeds 1024 bytes once decoded"}, {}),
    (UnsupportedEncoding("lz4"), 415,
     {"message": "Content-Encoding 'lz4' is not supported (gzip, deflate, br, zstd)", "header": "content-encoding"},
     {}),
    (OwnKeyRequired("openai", "GET /models is not an endpoint this gateway serves with its openai keys"), 403,
     {"message": "GET /models is not an endpoint this gateway serves with its openai keys"}, {}),
    (MethodNotAllowed("GET", "the compat endpoint answers POST, not GET"), 405,
     {"message": "the compat endpoint answers POST, not GET"}, {}),
    (NotFound("expected /v1/{account}/{gateway}/{provider}/{path}"), 404,
     {"message": "expected /v1/{account}/{gateway}/{provider}/{path}"}, {}),
    (UnknownAccount("acme"), 404, {"message": "unknown account 'acme'"}, {}),
    (UnknownGateway("prod"), 404, {"message": "unknown gateway 'prod'"}, {}),
    (UnknownCustomProvider("mine"), 404,
     {"message": "custom provider 'mine' is not registered on this gateway"}, {}),
    (UnknownDynamicRoute("cheap"), 404, {"message": "unknown dynamic route 'cheap'"}, {}),
    (RouteNotFound("cheap"), 404, {"message": "route 'cheap' not found"}, {}),
    (RouteNotFound("cheap", 3), 404, {"message": "route 'cheap' version 3 not found"}, {}),
    (PolicyDenied("openai/gpt-4o", ("interns",)), 403, {"message": "Access denied by policy"}, {}),
    (RateLimitExceeded(rule="burst", unit="requests", limit=40, remaining=0, resets_at=T0 + timedelta(seconds=1.2),
                       refused_at=T0), 429,
     {"message": "Rate limit exceeded", "rule": "burst", "unit": "requests", "limit": 40,
      "resets_at": "2026-11-24T15:00:01.700000+00:00"},
     {"retry-after": "2", "x-ratelimit-limit": "40", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "2"}),
    (PromptBlocked(["pii.email", "secret.aws"]), 400, {"message": "Prompt blocked due to security configurations",
                                                      "code": 2016, "categories": ["pii.email", "secret.aws"]}, {}),
    (ResponseBlocked(["pii.card"]), 400, {"message": "Response blocked due to security configurations",
                                          "code": 2017, "categories": ["pii.card"]}, {}),
    (IdentityRejected("token expired"), 401, {"message": "Cf-Access-Jwt-Assertion: token expired"}, {}),
    (ClaimError("claim sub must be a string"), 401,
     {"message": "Cf-Access-Jwt-Assertion: claim sub must be a string"}, {}),
    (IdentityRequired(), 401, {"message": "this gateway requires an identity (Cf-Access-Jwt-Assertion)"}, {}),
    (GatewayTokenRejected("invalid gateway token"), 401, {"message": "invalid gateway token"}, {}),
    (RuleBudgetExceeded(rule="team", rule_id="r1", bucket={"metadata.team": "a"}, **AMOUNTS,
                        resets_at=T0 + timedelta(hours=9), refused_at=T0), 429,
     {"message": "Spending limit exceeded", "rule": "team", "rule_id": "r1", "bucket": {"metadata.team": "a"},
      **AMOUNTS_USD, "resets_at": "2026-11-25T00:00:00.500000+00:00"}, {"retry-after": "32400"}),
    (AccountLimitExceeded(duration="daily", strategy="rolling", **AMOUNTS,
                          resets_at=T0 + timedelta(milliseconds=200), refused_at=T0), 429,
     {"message": "Account spending limit exceeded", "duration": "daily", "strategy": "rolling", **AMOUNTS_USD,
      "resets_at": "2026-11-24T15:00:00.700000+00:00"}, {"retry-after": "1"}),
    (InsufficientCredit(LedgerReason.INSUFFICIENT_CREDIT, -5, 150_000_000), 402,
     {"message": "Insufficient credit for this request's worst-case cost", "reason": "insufficient_credit",
      "available_usd": "0.00", "reserved_usd": "0.15"}, {}),
    (InsufficientCredit(LedgerReason.UNKNOWN_ACCOUNT, None, 150_000_000), 402,
     {"message": "Insufficient credit for this request's worst-case cost", "reason": "unknown_account",
      "reserved_usd": "0.15"}, {}),
    (UpstreamFailure("openai", "openai failed"), 502, {"message": "openai failed"}, {}),
    (UpstreamUnreachable("openai", "openai is unreachable: connection refused"), 502,
     {"message": "openai is unreachable: connection refused"}, {}),
    (UpstreamTimeout("openai", "openai did not answer within 100 ms"), 504,
     {"message": "openai did not answer within 100 ms"}, {}),
    (UpstreamBroke("groq", "groq broke the connection before its answer was complete: ReadError"), 502,
     {"message": "groq broke the connection before its answer was complete: ReadError"}, {}),
    (UpstreamNotJSON("anthropic"), 502, {"message": "anthropic sent a body that is not JSON"}, {}),
    (CompatUpstreamError("anthropic", "anthropic: overloaded"), 502, {"message": "anthropic: overloaded"}, {}),
    (ClientLeft("openai"), 499, {"message": "the client went away before openai answered"}, {}),
    (RouteServedNothing("cheap"), 502, {"message": "dynamic route 'cheap' ended without calling a model"}, {}),
    (DatabaseUnavailable(2), 503,
     {"message": "Database unavailable; the request was not forwarded. Retry shortly.", "retryable": True},
     {"retry-after": "2"}),
    (InternalError(), 500, {"message": "Internal error"}, {}),
    (ConfigError("x", "x is wrong"), 422, {"message": "x is wrong", "field": "x"}, {}),
    (InvalidAmount("amount_usd", "amount_usd must be finite"), 422,
     {"message": "amount_usd must be finite", "field": "amount_usd"}, {}),
    (SettingsError("zdr", "zdr must be true or false"), 422,
     {"message": "zdr must be true or false", "field": "zdr"}, {}),
    (RuleError("window", "window must be daily, weekly or monthly"), 422,
     {"message": "window must be daily, weekly or monthly", "field": "window"}, {}),
    (TooManyRules("rule", "a gateway has at most 20 rules"), 409,
     {"message": "a gateway has at most 20 rules", "field": "rule"}, {}),
    (PolicyError("group", "must be a non-empty string"), 422,
     {"message": "must be a non-empty string", "field": "group"}, {}),
    (RouteError("start", "start must name an element"), 422,
     {"message": "start must name an element", "field": "start"}, {}),
    (RouteExists("name", "route 'a' exists; POST a new version instead"), 409,
     {"message": "route 'a' exists; POST a new version instead", "field": "name"}, {}),
    (QueryError("group_by", "a dimension is named twice"), 422,
     {"message": "a dimension is named twice", "field": "group_by"}, {}),
    (LedgerError(LedgerReason.UNKNOWN_ACCOUNT, "account 'a' has no credits ledger"), 404,
     {"message": "account 'a' has no credits ledger"}, {}),
    (LedgerError(LedgerReason.ID_CONFLICT, "idempotency key already used for a different top-up"), 409,
     {"message": "idempotency key already used for a different top-up"}, {}),
    (LedgerError(LedgerReason.INSUFFICIENT_CREDIT, "the debit account's balance does not cover the amount"), 409,
     {"message": "the debit account's balance does not cover the amount"}, {}),
    (LedgerError(LedgerReason.INVALID_AMOUNT, "amount must be greater than zero"), 422,
     {"message": "amount must be greater than zero"}, {}),
    (AdminError(409, "account 'a' already exists", "id"), 409,
     {"message": "account 'a' already exists", "field": "id"}, {}),
    (AdminError(404, "route 'a' not found"), 404, {"message": "route 'a' not found"}, {}),
    (CliError("no key on standard input"), 500, {"message": "no key on standard input"}, {}),
]
ABSTRACT = {"GatewayError", "RequestRefused", "Unauthenticated", "SpendRefused", "BudgetExceeded"}


def test_every_class_of_the_tree_has_a_mapping_case() -> None:
    covered = {type(error).__name__ for error, *_ in CASES}
    assert set(_drawn_tree()) - ABSTRACT - covered == set()


@pytest.mark.parametrize(("error", "status", "body", "headers"), CASES,
                         ids=[f"{type(c[0]).__name__}-{i}" for i, c in enumerate(CASES)])
def test_the_mapping(error: GatewayError, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
    answer = to_response(error)
    assert answer.status == status
    assert answer.body == {"success": False, "error": body}
    assert list(answer.body["error"]) == list(body), "the fields come in the documented order"
    assert {k.lower(): v for k, v in answer.headers.items()} == headers
    # rendered as every layer answers: compact JSON, the headers on top of content-type and content-length
    response = answer.render()
    assert response.status_code == status
    assert response.body == json.dumps({"success": False, "error": body}, ensure_ascii=False,
                                       separators=(",", ":")).encode()
    rendered = {k.decode(): v.decode() for k, v in response.raw_headers}
    assert rendered == {**headers, "content-length": str(len(response.body)), "content-type": "application/json"}


def test_a_credit_refusal_is_typed_from_the_ledgers_answer() -> None:
    refusal = HoldRefusal.of({"ok": False, "reason": "spending_limit", "available": 7, "limit": 30, "spent": 20,
                              "pending": 5, "duration": "weekly", "strategy": "fixed"})
    assert refusal == HoldRefusal(LedgerReason.SPENDING_LIMIT, 7, 20, 5, 30, "weekly", "fixed")
    assert HoldRefusal.of({"ok": False, "reason": "insufficient_credit", "available": 3}) == HoldRefusal(
        LedgerReason.INSUFFICIENT_CREDIT, 3)


def test_policy_errors_name_the_field_first_and_stay_value_errors() -> None:
    error = PolicyError("models", "must be a non-empty list")
    assert str(error) == "models: must be a non-empty list" and error.message == "must be a non-empty list"
    assert isinstance(error, ValueError) and isinstance(RuleError("f", "m"), ValueError)
