"""Spend rules (README, "Spend limits"): validation from the admin API's JSON, and which buckets a request falls in.

A rule's scope names dimensions: `provider`, `model` (`{provider}/{model}`), `metadata.<key>` and the identity
keys `cf.user_id`, `cf.user.email`, `cf.user.groups`, `cf.service_token`. Each is `{"split": true}` (every
distinct value has its own bucket) or `{"equals": v}` (the rule applies only when the value equals v). A request
without a value for a split dimension falls in that dimension's `null` bucket. `cf.user.groups` is a list: with
`equals` the rule applies when the list contains the value; with `split` the request counts in one bucket per
group, so a member of two groups spends from both groups' budgets.

A bucket key is the canonical JSON of the request's split values, and it is shown as JSON again (the 429 body,
the admin bucket view), so every key is built to survive that: values JSON cannot carry (NaN and infinities,
strings with lone surrogates) are written as strings (`"NaN"`, `"Infinity"`, `"-Infinity"`, U+FFFD for each lone
surrogate), which merges them with those strings' buckets - spend counted together, never lost. Finite floats
keep their exact JSON (`1e+308`, and `-0.0` apart from `0.0`). A key longer than `MAX_KEY_CHARS` (the key is part
of a btree primary key, and Postgres refuses index rows past about 2.7 kB) has each value whose JSON is longer
than `MAX_KEY_VALUE_CHARS` replaced by `"sha256:<hex of that JSON>"`: still one bucket per distinct value.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from gateway.errors import InvalidAmount, RuleError
from gateway.money import parse_usd, to_nano
from gateway.pricing import canonical_model_ref
from gateway.windows import WINDOW_TYPES, WINDOWS, Window

MAX_RULES_PER_GATEWAY = 20
MAX_KEY_CHARS = 2000
MAX_KEY_VALUE_CHARS = 64
IDENTITY_DIMENSIONS = ("cf.user_id", "cf.user.email", "cf.user.groups", "cf.service_token")
ActionKind = Literal["block", "fallback", "monitor"]


@dataclass(frozen=True)
class Dimension:
    name: str
    split: bool
    equals: str | int | float | bool | None = None


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    budget_nano: int
    window: Window
    dimensions: tuple[Dimension, ...]
    action: ActionKind
    fallback_model: str | None = None
    alert_at: tuple[Decimal, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False)
    forecast_alert: bool = False  # "forecast" in alert_at: alert when the forecast says the bucket runs out

    def bucket_keys(self, attributes: dict[str, Any]) -> list[str]:
        """`attributes` maps dimension names (`provider`, `model`, `metadata.<key>`, `cf.*`) to the request's values.

        The bucket keys this request falls in (canonical JSON of the split values); [] if the rule skips it."""
        return bucket_keys(self.dimensions, attributes)


def bucket_keys(dimensions: tuple[Dimension, ...], attributes: dict[str, Any]) -> list[str]:
    """The bucket keys of a request under a scope's `dimensions` (spend rules and rate limits alike)."""
    choices: list[list[tuple[str, Any]]] = []
    for dim in dimensions:
        value = attributes.get(dim.name)
        if not dim.split:
            if isinstance(value, list | tuple):
                if dim.equals not in value:
                    return []
            elif value != dim.equals:
                return []
            continue
        if isinstance(value, list | tuple):
            values: list[str | None] = [*sorted({str(v) for v in value})] or [None]
            choices.append([(dim.name, v) for v in values])
        else:
            choices.append([(dim.name, value)])
    return [_key(combo) for combo in itertools.product(*choices)]


_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _key_value(value: Any) -> Any:
    """A split value as a bucket key holds it: something JSON (and UTF-8) can carry."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, str) and not value.isascii():
        return _LONE_SURROGATE.sub("\ufffd", value)
    return value


def _key(combo: tuple[tuple[str, Any], ...]) -> str:
    values = {name: _key_value(value) for name, value in combo}
    key = json.dumps(values, sort_keys=True, separators=(",", ":"))
    if len(key) <= MAX_KEY_CHARS:
        return key
    for name, value in values.items():
        encoded = json.dumps(value)
        if len(encoded) > MAX_KEY_VALUE_CHARS:
            values[name] = "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()
    return json.dumps(values, sort_keys=True, separators=(",", ":"))


def json_safe(value: Any) -> Any:
    """A decoded bucket key (or part of one) that JSON answers can render: keys stored before bucket keys were
    made safe may still hold NaN, infinities or lone surrogates."""
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return _key_value(value)


def parse_rule(rule_id: str, data: Any) -> Rule:
    """Validate one rule object; RuleError names the offending field."""
    if not isinstance(data, dict):
        raise RuleError("rule", "a rule must be a JSON object")
    known = {"name", "budget_usd", "window", "window_type", "scope", "action", "alert_at"}
    for key in data:
        if key not in known:
            raise RuleError(key, f"unknown field {key!r}")
    name = data.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 100:
        raise RuleError("name", "name must be a string of 1 to 100 characters")
    try:
        budget = parse_usd(data.get("budget_usd"), field="budget_usd")
    except InvalidAmount as exc:
        raise RuleError("budget_usd", str(exc)) from None
    window = data.get("window")
    if window not in WINDOWS:
        raise RuleError("window", "window must be daily, weekly or monthly")
    window_type = data.get("window_type", "fixed")
    if window_type not in WINDOW_TYPES:
        raise RuleError("window_type", "window_type must be fixed or rolling")
    dimensions = _parse_scope(data.get("scope", {}))
    action, fallback = _parse_action(data.get("action", "block"))
    alerts = data.get("alert_at", [])
    forecast_alert = isinstance(alerts, list) and "forecast" in alerts
    alert_at = _parse_alerts([a for a in alerts if a != "forecast"] if forecast_alert else alerts)
    return Rule(rule_id, name, to_nano(budget), Window(window, window_type), dimensions, action, fallback,
                alert_at, dict(data), forecast_alert)


def _parse_scope(scope: Any) -> tuple[Dimension, ...]:
    if not isinstance(scope, dict):
        raise RuleError("scope", "scope must be an object of dimension -> {split|equals}")
    dims = []
    for name in sorted(scope):
        spec = scope[name]
        where = f"scope.{name}"
        if not (name in ("provider", "model") or name in IDENTITY_DIMENSIONS
                or (name.startswith("metadata.") and len(name) > len("metadata."))):
            raise RuleError(where, f"unknown dimension {name!r}")
        if not isinstance(spec, dict) or len(spec) != 1 or not ({"split", "equals"} & set(spec)):
            raise RuleError(where, 'a dimension is {"split": true} or {"equals": value}')
        if "split" in spec:
            if spec["split"] is not True:
                raise RuleError(where, "split must be true")
            dims.append(Dimension(name, True))
        else:
            value = spec["equals"]
            if not isinstance(value, str | int | float | bool):
                raise RuleError(where, "equals takes a string, number or boolean")
            if name == "model" and isinstance(value, str):
                value = canonical_model_ref(value)  # as requests' models are read: any spelling of the same model
            dims.append(Dimension(name, False, value))
    return tuple(dims)


def _parse_action(action: Any) -> tuple[ActionKind, str | None]:
    if action in ("block", "monitor"):
        return action, None
    if isinstance(action, dict) and set(action) == {"fallback_model"}:
        model = action["fallback_model"]
        if isinstance(model, str) and "/" in model.strip("/"):
            return "fallback", model
    raise RuleError("action", 'action must be "block", "monitor" or {"fallback_model": "provider/model"}')


def _parse_alerts(alerts: Any) -> tuple[Decimal, ...]:
    if not isinstance(alerts, list) or len(alerts) > 10:
        raise RuleError("alert_at", 'alert_at must be a list of at most 10 fractions (and "forecast")')
    out = []
    for a in alerts:
        if isinstance(a, bool) or not isinstance(a, int | float | str):
            raise RuleError("alert_at", 'alert_at holds fractions in (0, 1] and "forecast"')
        try:
            value = Decimal(repr(a)) if isinstance(a, float) else Decimal(str(a))
        except InvalidOperation:
            raise RuleError("alert_at", "alert_at fractions must be numbers in (0, 1]") from None
        # NaN first: comparing a NaN Decimal raises instead of answering False
        if not value.is_finite() or not 0 < value <= 1:
            raise RuleError("alert_at", "alert_at fractions must be in (0, 1]")
        out.append(value)
    return tuple(sorted(set(out)))
