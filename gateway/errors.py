"""Every error the gateway raises on purpose, in one tree, and the one mapping from an error to its HTTP answer.

Domain errors say what went wrong in the domain's own terms — the provider, the model, the rule and its bucket,
amounts in nano-USD, a reason — and never an HTTP status. `to_response` is the only place that chooses a status,
a JSON body and headers for one; the code that answers (the middleware layers, the router, the admin API) only
renders what it returns, each in the shape its client expects (`ProviderRouter.refuse` in the provider's error
shape). An error that happens after the first byte of an answer cannot be answered any more: the code that wraps
the stream ends it (gateway/providers/router.py, gateway/providers/compat_route.py).

Two classes belong to an edge rather than the domain: `AdminError` carries its status, because the admin API's
handlers are the HTTP edge and choose their answer themselves; `CliError` is what an operator command prints.

The tree (indentation is inheritance, the number is the status `to_response` answers with; tests/test_errors.py
keeps it equal to the classes that exist):

    GatewayError
    ├── RequestRefused                 the gateway answers the request itself: nothing went upstream
    │   ├── InvalidRequest             400  the request cannot be represented faithfully, or is malformed
    │   │   ├── HeaderError            400  a header's value (names the header)
    │   │   ├── LimitError             400  an output limit field (names it)
    │   │   ├── MetadataError          400  cf-aig-metadata
    │   │   ├── NestedTooDeep          400  a JSON body nested past the parser's depth
    │   │   ├── CompatError            400  a compat body the translation cannot read (names the field)
    │   │   ├── UnknownProvider        400  a provider the gateway has no adapter for
    │   │   ├── BillingRefused         400  no key or billing mode may serve the call as asked
    │   │   ├── UnpricedModel          400  unified billing (or block_unpriced) and no price for what it uses
    │   │   └── EstimateTooLarge       400  a worst case past what one call may reserve
    │   ├── BodyTooLarge               413
    │   ├── UnsupportedEncoding        415
    │   ├── OwnKeyRequired             403  an endpoint the gateway's keys do not serve
    │   ├── MethodNotAllowed           405
    │   ├── NotFound                   404
    │   │   ├── UnknownAccount         404
    │   │   ├── UnknownGateway         404
    │   │   ├── UnknownCustomProvider  404
    │   │   ├── UnknownDynamicRoute    404
    │   │   └── RouteNotFound          404  a route (or one of its versions) the admin API was asked for
    │   ├── PolicyDenied               403  the caller's groups may not use the model
    │   ├── PromptBlocked              400  a guardrail refused the prompt (code 2016, the categories found)
    │   ├── RateLimitExceeded          429  (Retry-After, x-ratelimit-*) a rate limit has no room: rule, limit, reset
    │   ├── Unauthenticated            401
    │   │   ├── IdentityRejected       401  the Access / OIDC JWT does not verify (the reason says why)
    │   │   │   └── ClaimError         401  a verified token whose claims are not the shape an identity needs
    │   │   ├── IdentityRequired       401
    │   │   └── GatewayTokenRejected   401  missing or invalid gateway token
    │   └── SpendRefused               the request's worst case does not fit
    │       ├── BudgetExceeded         429  (Retry-After) what is spent, pending, needed, the limit, the reset
    │       │   ├── RuleBudgetExceeded       a spend-limit rule's bucket
    │       │   └── AccountLimitExceeded     the account's own spending limit (unified billing)
    │       └── InsufficientCredit     402  the credit balance cannot hold the worst case
    ├── UpstreamFailure                502  no usable answer from the provider, before any byte reached the client
    │   ├── UpstreamUnreachable        502
    │   ├── UpstreamTimeout            504
    │   ├── UpstreamBroke              502  the connection broke before the answer was complete
    │   ├── UpstreamNotJSON            502  a compat answer that is not JSON
    │   └── CompatUpstreamError        502  an error event inside a translated stream (ends the stream)
    ├── ResponseBlocked                400  a guardrail refused the answer (code 2017); the call is billed
    ├── ClientLeft                     499  the client went away before the provider answered
    ├── RouteServedNothing             502  a dynamic route ended without calling a model
    ├── DatabaseUnavailable            503  (Retry-After) the request was not forwarded: safe to retry
    ├── InternalError                  500  an exception nobody expected (its details go to the log only)
    ├── ConfigError                    422  an operator's configuration refused (names the field)
    │   ├── InvalidAmount              422  not a finite, in-range decimal USD amount
    │   ├── SettingsError              422
    │   ├── RuleError                  422
    │   │   └── TooManyRules           409
    │   ├── PolicyError                422
    │   ├── RouteError                 422
    │   │   └── RouteExists            409
    │   └── QueryError                 422  an analytics query's parameters (names the parameter)
    ├── LedgerError                    the reason decides: unknown_account 404, id_conflict 409, ... 422
    ├── AdminError                     its own status (the admin API's handlers are the HTTP edge)
    └── CliError                       an operator command's message (stderr, exit 1; never HTTP)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where a response is made: the CLI imports this module and must stay light
    from starlette.responses import JSONResponse


def json_error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """The JSON error every layer answers with: {"success": false, "error": {"message": ..., ...}} (extras that
    are None are left out)."""
    from starlette.responses import JSONResponse

    error: dict[str, Any] = {"message": message}
    error.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse({"success": False, "error": error}, status_code=status, headers=headers)


class GatewayError(Exception):
    """The root of every error the gateway raises on purpose. `message` is the text an answer shows."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# -- refused requests ------------------------------------------------------------------------------------------


class RequestRefused(GatewayError):
    """The gateway answers the request itself; nothing went upstream. `header` / `param` name the header or the
    body field at fault, when one is."""

    def __init__(self, message: str, *, header: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.header = header
        self.param = param


class InvalidRequest(RequestRefused):
    """The request cannot be represented faithfully, or is malformed (docs/refusals.md)."""


class HeaderError(InvalidRequest):
    def __init__(self, header: str, message: str) -> None:
        super().__init__(message, header=header)


class LimitError(InvalidRequest):
    """An output limit field out of range, or two of them that disagree (`field` names it)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, param=field)
        self.field = field


class MetadataError(InvalidRequest):
    def __init__(self, message: str) -> None:
        super().__init__(message, header="cf-aig-metadata")


class NestedTooDeep(InvalidRequest):
    def __init__(self, depth: int) -> None:
        super().__init__(f"the JSON body nests deeper than {depth} levels")
        self.depth = depth


class CompatError(InvalidRequest):
    """A compat body the translation cannot read; `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param=param)


class UnknownProvider(InvalidRequest):
    def __init__(self, provider: str) -> None:
        super().__init__(f"unknown provider {provider!r}")
        self.provider = provider


class BillingRefused(InvalidRequest):
    """No key or billing mode may serve the call as asked (byok_only, cf-aig-no-wholesale, no key...)."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(message)
        self.provider = provider


class UnpricedModel(InvalidRequest):
    """The model (or a part of what it is asked for: audio, images, searches) has no price, and unified billing
    or the gateway's `block_unpriced` needs one."""

    def __init__(self, provider: str, model: str | None, message: str) -> None:
        super().__init__(message)
        self.provider = provider
        self.model = model


class EstimateTooLarge(InvalidRequest):
    def __init__(self, estimate_nano: int, maximum_nano: int, message: str) -> None:
        super().__init__(message)
        self.estimate_nano = estimate_nano
        self.maximum_nano = maximum_nano


class BodyTooLarge(RequestRefused):
    """The body past `limit` bytes, as sent or (`decoded`) once its Content-Encoding is undone."""

    def __init__(self, limit: int, *, decoded: bool = False) -> None:
        super().__init__(f"request body exceeds {limit} bytes" + (" once decoded" if decoded else ""))
        self.limit = limit
        self.decoded = decoded


class UnsupportedEncoding(RequestRefused):
    def __init__(self, coding: str) -> None:
        super().__init__(f"Content-Encoding {coding!r} is not supported (gzip, deflate, br, zstd)",
                         header="content-encoding")
        self.coding = coding


class OwnKeyRequired(RequestRefused):
    """An endpoint the gateway does not understand: served only with the client's own key."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(message)
        self.provider = provider


class MethodNotAllowed(RequestRefused):
    def __init__(self, method: str, message: str) -> None:
        super().__init__(message)
        self.method = method


class NotFound(RequestRefused):
    """What the request names does not exist."""


class UnknownAccount(NotFound):
    def __init__(self, account_id: str) -> None:
        super().__init__(f"unknown account {account_id!r}")
        self.account_id = account_id


class UnknownGateway(NotFound):
    def __init__(self, gateway_id: str) -> None:
        super().__init__(f"unknown gateway {gateway_id!r}")
        self.gateway_id = gateway_id


class UnknownCustomProvider(NotFound):
    def __init__(self, slug: str) -> None:
        super().__init__(f"custom provider {slug!r} is not registered on this gateway")
        self.slug = slug


class UnknownDynamicRoute(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown dynamic route {name!r}")
        self.name = name


class RouteNotFound(NotFound):
    def __init__(self, name: str, version: int | None = None) -> None:
        super().__init__(f"route {name!r}" + ("" if version is None else f" version {version!r}") + " not found")
        self.name = name
        self.version = version


class PolicyDenied(RequestRefused):
    def __init__(self, model: str, groups: tuple[str, ...]) -> None:
        super().__init__("Access denied by policy")
        self.model = model
        self.groups = groups


class PromptBlocked(RequestRefused):
    """A guardrail whose action is `block` found these categories in the prompt (gateway/guardrails/)."""

    code = 2016

    def __init__(self, categories: list[str]) -> None:
        super().__init__("Prompt blocked due to security configurations")
        self.categories = categories


class Unauthenticated(RequestRefused):
    """The caller is not who the gateway needs it to be."""


class IdentityRejected(Unauthenticated):
    """The `Cf-Access-Jwt-Assertion` token does not verify; `reason` says why (expired, wrong audience...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"Cf-Access-Jwt-Assertion: {reason}")
        self.reason = reason


class ClaimError(IdentityRejected):
    """A signed token whose claims are not the shape an identity needs."""


class IdentityRequired(Unauthenticated):
    def __init__(self) -> None:
        super().__init__("this gateway requires an identity (Cf-Access-Jwt-Assertion)")


class GatewayTokenRejected(Unauthenticated):
    """No gateway token where the gateway needs one, or one that is not the gateway's."""


class RateLimitExceeded(RequestRefused):
    """A rate limit (the gateway's `rate_limits`) has no room for this request: `limit` and `remaining` in its
    `unit` (requests or tokens); `resets_at` is when enough will have left its interval for this request to fit,
    as seen at `refused_at`."""

    def __init__(self, *, rule: str, unit: str, limit: int, remaining: int, resets_at: datetime,
                 refused_at: datetime) -> None:
        super().__init__("Rate limit exceeded")
        self.rule = rule
        self.unit = unit
        self.limit = limit
        self.remaining = remaining
        self.resets_at = resets_at
        self.refused_at = refused_at

    @property
    def retry_after_s(self) -> int:
        return max(1, math.ceil((self.resets_at - self.refused_at).total_seconds()))


class SpendRefused(RequestRefused):
    """The request's worst-case cost does not fit a budget or the credit balance."""


class BudgetExceeded(SpendRefused):
    """A budget would overflow. Amounts in nano-USD: `spent` (settled in the window), `pending` (what other requests
    in flight hold there), `reserved` (this request's worst case, what it needed), `limit`; `resets_at` is when
    enough of the spend has left the window for this request to fit, as seen at `refused_at`."""

    def __init__(self, message: str, *, spent_nano: int, pending_nano: int, reserved_nano: int, limit_nano: int,
                 resets_at: datetime, refused_at: datetime) -> None:
        super().__init__(message)
        self.spent_nano = spent_nano
        self.pending_nano = pending_nano
        self.reserved_nano = reserved_nano
        self.limit_nano = limit_nano
        self.resets_at = resets_at
        self.refused_at = refused_at


class RuleBudgetExceeded(BudgetExceeded):
    """A `block` rule's bucket (`bucket`: its key, decoded) would overflow."""

    def __init__(self, *, rule: str, rule_id: str, bucket: Any, spent_nano: int, pending_nano: int,
                 reserved_nano: int, limit_nano: int, resets_at: datetime, refused_at: datetime) -> None:
        super().__init__("Spending limit exceeded", spent_nano=spent_nano, pending_nano=pending_nano,
                         reserved_nano=reserved_nano, limit_nano=limit_nano, resets_at=resets_at,
                         refused_at=refused_at)
        self.rule = rule
        self.rule_id = rule_id
        self.bucket = bucket


class AccountLimitExceeded(BudgetExceeded):
    """The account's own spending limit (unified billing, checked in the credit hold) would overflow."""

    def __init__(self, *, duration: str, strategy: str, spent_nano: int, pending_nano: int, reserved_nano: int,
                 limit_nano: int, resets_at: datetime, refused_at: datetime) -> None:
        super().__init__("Account spending limit exceeded", spent_nano=spent_nano, pending_nano=pending_nano,
                         reserved_nano=reserved_nano, limit_nano=limit_nano, resets_at=resets_at,
                         refused_at=refused_at)
        self.duration = duration
        self.strategy = strategy


class LedgerReason(StrEnum):
    """Why the ledger refused an operation (or a credit hold)."""

    INSUFFICIENT_CREDIT = "insufficient_credit"
    SPENDING_LIMIT = "spending_limit"
    UNKNOWN_ACCOUNT = "unknown_account"
    ID_CONFLICT = "id_conflict"
    INVALID_AMOUNT = "invalid_amount"
    INVALID_LIMIT = "invalid_limit"


class InsufficientCredit(SpendRefused):
    """The credit hold for the worst case was refused: `reason` is the ledger's, `available_nano` what the balance
    has left (when known), `reserved_nano` what this request needed."""

    def __init__(self, reason: LedgerReason | str, available_nano: int | None, reserved_nano: int) -> None:
        super().__init__("Insufficient credit for this request's worst-case cost")
        self.reason = reason
        self.available_nano = available_nano
        self.reserved_nano = reserved_nano


# -- the upstream and the client -------------------------------------------------------------------------------


class UpstreamFailure(GatewayError):
    """No usable answer from `provider`. `sent`: attempts that reached it (it may bill each: it had the prompt)."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(message)
        self.provider = provider
        self.sent = 0


class UpstreamUnreachable(UpstreamFailure):
    pass


class UpstreamTimeout(UpstreamFailure):
    pass


class UpstreamBroke(UpstreamFailure):
    """The status line and headers came, then the connection broke before the answer was complete."""


class UpstreamNotJSON(UpstreamFailure):
    def __init__(self, provider: str) -> None:
        super().__init__(provider, f"{provider} sent a body that is not JSON")


class CompatUpstreamError(UpstreamFailure):
    """An error event inside a stream being translated: the client's stream ends with it."""


class ResponseBlocked(GatewayError):
    """A guardrail whose action is `block` found these categories in the answer: the provider answered (the call is
    billed), the client is not given the text."""

    code = 2017

    def __init__(self, categories: list[str]) -> None:
        super().__init__("Response blocked due to security configurations")
        self.categories = categories


class ClientLeft(GatewayError):
    def __init__(self, provider: str) -> None:
        super().__init__(f"the client went away before {provider} answered")
        self.provider = provider


class RouteServedNothing(GatewayError):
    def __init__(self, name: str) -> None:
        super().__init__(f"dynamic route {name!r} ended without calling a model")
        self.name = name


class DatabaseUnavailable(GatewayError):
    """The database is unreachable; the request was not forwarded, so it may be retried after `retry_after_s`."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("Database unavailable; the request was not forwarded")
        self.retry_after_s = retry_after_s


class InternalError(GatewayError):
    def __init__(self) -> None:
        super().__init__("Internal error")


# -- configuration, the ledger ----------------------------------------------------------------------------------


class ConfigError(GatewayError, ValueError):
    """An operator's configuration input refused; `field` names the part at fault. Also a ValueError: it is what
    validating input raises."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


class InvalidAmount(ConfigError):
    """An amount that is not a finite, non-negative decimal USD value within range."""


class SettingsError(ConfigError):
    pass


class QueryError(ConfigError):
    """An analytics query that cannot be run: `field` names the parameter."""


class RuleError(ConfigError):
    pass


class TooManyRules(RuleError):
    pass


class PolicyError(ConfigError):
    """Its text names the field first (`group: must be a non-empty string`); `message` is the rest."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.args = (f"{field}: {message}",)


class RouteError(ConfigError):
    pass


class RouteExists(RouteError):
    pass


class LedgerError(GatewayError):
    """A refused ledger operation; `reason` says why, `details` what the ledger knew."""

    def __init__(self, reason: LedgerReason, message: str, **details: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.details = details


# -- the edges --------------------------------------------------------------------------------------------------


class AdminError(GatewayError):
    """An admin API answer chosen by its handler: the admin handlers are the HTTP edge, so this one class carries
    its status. `field` names the input at fault."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


class CliError(GatewayError):
    """What an operator command tells on stderr (and the command exits 1)."""


# -- the mapping ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorResponse:
    """An error's HTTP answer: `{"success": false, "error": {"message": ..., **fields}}` with `headers`."""

    status: int
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def body(self) -> dict[str, Any]:
        return {"success": False, "error": {"message": self.message, **self.fields}}

    def render(self) -> JSONResponse:
        return json_error(self.status, self.message, self.headers or None, **self.fields)


LEDGER_STATUS = {LedgerReason.UNKNOWN_ACCOUNT: 404, LedgerReason.ID_CONFLICT: 409,
                 LedgerReason.INSUFFICIENT_CREDIT: 409}


def to_response(error: GatewayError) -> ErrorResponse:
    """The one mapping from an error to its HTTP answer (status, JSON body fields, headers)."""
    from gateway.money import usd_str  # money raises InvalidAmount from here: imported when first needed

    def answer(status: int, message: str | None = None, headers: dict[str, str] | None = None,
               **fields: Any) -> ErrorResponse:
        return ErrorResponse(status, error.message if message is None else message,
                             {k: v for k, v in fields.items() if v is not None}, headers or {})

    match error:
        case AdminError():
            return answer(error.status, field=error.field)
        case BudgetExceeded():
            retry_after = max(1, math.ceil((error.resets_at - error.refused_at).total_seconds()))
            named: dict[str, Any] = {}
            if isinstance(error, RuleBudgetExceeded):
                named = {"rule": error.rule, "rule_id": error.rule_id, "bucket": error.bucket}
            elif isinstance(error, AccountLimitExceeded):
                named = {"duration": error.duration, "strategy": error.strategy}
            return answer(429, headers={"Retry-After": str(retry_after)}, **named,
                          spent_usd=usd_str(error.spent_nano), pending_usd=usd_str(error.pending_nano),
                          reserved_usd=usd_str(error.reserved_nano), limit_usd=usd_str(error.limit_nano),
                          resets_at=error.resets_at.isoformat())
        case RateLimitExceeded():
            wait = str(error.retry_after_s)
            return answer(429, headers={"Retry-After": wait, "x-ratelimit-limit": str(error.limit),
                                        "x-ratelimit-remaining": str(max(error.remaining, 0)),
                                        "x-ratelimit-reset": wait},
                          rule=error.rule, unit=error.unit, limit=error.limit, resets_at=error.resets_at.isoformat())
        case InsufficientCredit():
            available = None if error.available_nano is None else usd_str(max(error.available_nano, 0))
            return answer(402, reason=None if error.reason is None else str(error.reason),
                          available_usd=available, reserved_usd=usd_str(error.reserved_nano))
        case InvalidRequest() | BodyTooLarge() | UnsupportedEncoding():
            status = 413 if isinstance(error, BodyTooLarge) else 415 if isinstance(error, UnsupportedEncoding) \
                else 400
            return answer(status, header=error.header, param=error.param)
        case PromptBlocked() | ResponseBlocked():
            # Cloudflare's codes; 4xx so that no SDK retries (a retried answer would be billed again)
            return answer(400, code=error.code, categories=error.categories)
        case OwnKeyRequired() | PolicyDenied():
            return answer(403)
        case MethodNotAllowed():
            return answer(405)
        case NotFound():
            return answer(404)
        case Unauthenticated():
            return answer(401)
        case UpstreamTimeout():
            return answer(504)
        case UpstreamFailure() | RouteServedNothing():
            return answer(502)
        case ClientLeft():
            return answer(499)
        case DatabaseUnavailable():
            return answer(503, f"{error.message}. Retry shortly.", {"Retry-After": str(error.retry_after_s)},
                          retryable=True)
        case TooManyRules() | RouteExists():
            return answer(409, field=error.field)
        case ConfigError():
            return answer(422, field=error.field)
        case LedgerError():
            return answer(LEDGER_STATUS.get(error.reason, 422))
    return answer(500)  # InternalError, CliError, and any class the cases above do not name
