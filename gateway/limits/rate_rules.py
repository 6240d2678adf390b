"""Rate limits (README, "Rate limits"): the gateway setting `rate_limits`, validated, and the rules it makes.

A rule counts `requests` (1 per request) or `tokens` (a request's input bound plus its output limit, settled to
the tokens it used) in an interval of `interval_s` seconds, `fixed` (aligned to the Unix epoch) or `sliding`
(gateway/windows.py, `Interval`), per bucket of its `scope` (the dimensions of spend rules: `split` and
`equals`, gateway/limits/rules.py). Its buckets are rows of `limits.buckets` like a spend rule's, counted by the same
reservation functions (gateway/limits/reservations.py), so a rate limit holds across every instance.

A rule's id (the buckets' `rule_id`) is derived from the account, the gateway, its name, unit, interval and
technique: changing its `limit` or `scope` keeps what was counted; changing any of the others starts from zero.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from gateway.errors import RuleError, SettingsError
from gateway.limits.rules import Dimension, _parse_scope, bucket_keys
from gateway.windows import Interval

SETTING = "rate_limits"
MAX_RATE_LIMITS = 20
MAX_LIMIT = 10**15  # inside BIGINT with any sum of reservations
MAX_INTERVAL_S = 30 * 24 * 3600
UNITS = ("requests", "tokens")
TECHNIQUES = ("fixed", "sliding")
_NAMESPACE = uuid.UUID("5b1f4a64-2f55-4c1e-9a55-3f1f6a3e0d21")  # rate limit rule ids (uuid5)

Unit = Literal["requests", "tokens"]


@dataclass(frozen=True)
class RateRule:
    id: str
    name: str
    limit: int
    interval: Interval
    unit: Unit
    dimensions: tuple[Dimension, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    # what the reservation path reads of any rule: a rate limit always blocks, falls back to nothing, never alerts
    action: Literal["block"] = "block"
    fallback_model: None = None
    alert_at: tuple[Decimal, ...] = ()

    def bucket_keys(self, attributes: dict[str, Any]) -> list[str]:
        return bucket_keys(self.dimensions, attributes)


def validate(value: Any) -> list[dict[str, Any]]:
    """The setting as stored (every field spelled out), or SettingsError naming the field at fault."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_RATE_LIMITS:
        raise SettingsError(SETTING, f"{SETTING} must be a list of at most {MAX_RATE_LIMITS} rules")
    rules = [_validate_rule(n, rule) for n, rule in enumerate(value)]
    names = [r["name"] for r in rules]
    for n, name in enumerate(names):
        if name in names[:n]:
            raise SettingsError(f"{SETTING}[{n}].name", f"two rate limits are named {name!r}")
    return rules


def _validate_rule(n: int, rule: Any) -> dict[str, Any]:
    where = f"{SETTING}[{n}]"
    if not isinstance(rule, dict):
        raise SettingsError(where, "a rate limit is an object")
    for key in rule:
        if key not in ("name", "limit", "interval_s", "technique", "unit", "scope"):
            raise SettingsError(f"{where}.{key}", f"unknown field {key!r}")
    name = rule.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 100 or not name.isprintable():
        raise SettingsError(f"{where}.name", "name must be 1 to 100 printable characters")
    limit = rule.get("limit")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise SettingsError(f"{where}.limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    interval = rule.get("interval_s")
    if isinstance(interval, bool) or not isinstance(interval, int) or not 1 <= interval <= MAX_INTERVAL_S:
        raise SettingsError(f"{where}.interval_s", f"interval_s must be whole seconds from 1 to {MAX_INTERVAL_S}")
    technique = rule.get("technique", "fixed")
    if technique not in TECHNIQUES:
        raise SettingsError(f"{where}.technique", "technique must be fixed or sliding")
    unit = rule.get("unit", "requests")
    if unit not in UNITS:
        raise SettingsError(f"{where}.unit", "unit must be requests or tokens")
    scope = rule.get("scope", {})
    try:
        _parse_scope(scope)
    except RuleError as exc:
        raise SettingsError(f"{where}.{exc.field}", str(exc)) from None
    return {"name": name, "limit": limit, "interval_s": interval, "technique": technique, "unit": unit,
            "scope": scope}


def rate_rules(account: str, gateway: str, setting: list[dict[str, Any]]) -> tuple[RateRule, ...]:
    """The rules of a stored (valid) setting. Cached per setting object: a gateway's settings are loaded once per
    configuration change, so one hot gateway's requests all get the same rules (and lines)."""
    key = (account, gateway, id(setting))
    hit = _RULES.get(key)
    if hit is not None and hit[0] is setting:
        return hit[1]
    rules = rules_of(account, gateway, setting)
    if len(_RULES) >= 1024:
        del _RULES[next(iter(_RULES))]
    _RULES[key] = (setting, rules)  # keeps the setting alive, so that its id is not reused meanwhile
    return rules


_RULES: dict[tuple[str, str, int], tuple[list[dict[str, Any]], tuple[RateRule, ...]]] = {}


def rules_of(account: str, gateway: str, setting: list[dict[str, Any]]) -> tuple[RateRule, ...]:
    """The rules of a stored (valid) setting, not cached (for background work that reads every gateway)."""
    return tuple(_rule(account, gateway, spec) for spec in setting)


def _rule(account: str, gateway: str, spec: dict[str, Any]) -> RateRule:
    identity = "\x00".join((account, gateway, spec["name"], spec["unit"], str(spec["interval_s"]),
                            spec["technique"]))
    return RateRule(str(uuid.uuid5(_NAMESPACE, identity)), spec["name"], spec["limit"],
                    Interval(spec["interval_s"], spec["technique"] == "sliding"), spec["unit"],
                    _parse_scope(spec.get("scope", {})), dict(spec))
