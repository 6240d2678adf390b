from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from gateway.limits.rules import RuleError, parse_rule
from gateway.windows import Window

T = datetime(2026, 11, 25, 15, 42, 7, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(
    ("name", "start", "end"),
    [
        ("daily", datetime(2026, 11, 25, tzinfo=UTC), datetime(2026, 11, 26, tzinfo=UTC)),
        ("weekly", datetime(2026, 11, 23, tzinfo=UTC), datetime(2026, 11, 30, tzinfo=UTC)),
        ("monthly", datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)),
    ],
)
def test_fixed_windows_are_utc_aligned(name: str, start: datetime, end: datetime) -> None:
    w = Window(name, "fixed")  # type: ignore[arg-type]
    assert w.start(T) == start
    assert w.end(T) == end
    assert w.retry_after(T, [], 1) == end


def test_fixed_month_end_crosses_the_year() -> None:
    w = Window("monthly", "fixed")
    assert w.end(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)


def test_rolling_daily_slices_and_ageing() -> None:
    w = Window("daily", "rolling")
    assert w.slice_length == timedelta(minutes=30)
    assert w.start(T) == datetime(2026, 11, 25, 15, 30, tzinfo=UTC)
    # the slice holding "24 h ago" still counts in full: never under-count
    assert w.counted_since(T) == datetime(2026, 11, 24, 15, 30, tzinfo=UTC)
    old = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
    newer = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
    # 5 must age out: the oldest slice (3) is not enough, the second (4) is
    assert w.retry_after(T, [(newer, 4), (old, 3)], 5) == newer + timedelta(minutes=30, days=1)
    assert w.retry_after(T, [(old, 3)], 3) == old + timedelta(minutes=30, days=1)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError):
        Window("daily", "fixed").start(datetime(2026, 1, 1))


def rule(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "r", "budget_usd": "25.00", "window": "daily", "window_type": "fixed"}
    base.update(overrides)
    return base


def test_split_and_equals_scopes() -> None:
    r = parse_rule("1", rule(scope={"metadata.user_id": {"split": True}, "provider": {"equals": "anthropic"}}))
    assert r.budget_nano == 25_000_000_000
    attrs = {"provider": "anthropic", "model": "anthropic/claude", "metadata.user_id": "u1"}
    assert r.bucket_keys(attrs) == [json.dumps({"metadata.user_id": "u1"}, separators=(",", ":"))]
    assert r.bucket_keys({**attrs, "provider": "openai"}) == []
    assert r.bucket_keys({"provider": "anthropic"}) == ['{"metadata.user_id":null}']


def test_groups_split_gives_one_bucket_per_group_and_equals_means_membership() -> None:
    split = parse_rule("1", rule(scope={"cf.user.groups": {"split": True}}))
    assert split.bucket_keys({"cf.user.groups": ["b", "a"]}) == [
        '{"cf.user.groups":"a"}', '{"cf.user.groups":"b"}']
    equals = parse_rule("2", rule(scope={"cf.user.groups": {"equals": "interns"}}))
    assert equals.bucket_keys({"cf.user.groups": ["staff", "interns"]}) == ["{}"]
    assert equals.bucket_keys({"cf.user.groups": ["staff"]}) == []


def test_unscoped_rule_has_one_shared_bucket() -> None:
    assert parse_rule("1", rule()).bucket_keys({"provider": "x"}) == ["{}"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (rule(budget_usd=5.5), "budget_usd"),
        (rule(budget_usd="-1"), "budget_usd"),
        (rule(window="hourly"), "window"),
        (rule(window_type="sliding"), "window_type"),
        (rule(scope={"colour": {"split": True}}), "scope.colour"),
        (rule(scope={"provider": {"split": False}}), "scope.provider"),
        (rule(scope={"provider": {"equals": ["a"]}}), "scope.provider"),
        (rule(action="explode"), "action"),
        (rule(action={"fallback_model": "nomodel"}), "action"),
        (rule(alert_at=[1.5]), "alert_at"),
        (rule(alert_at=[True]), "alert_at"),
        (rule(extra=1), "extra"),
        ({"budget_usd": "1", "window": "daily"}, "name"),
    ],
)
def test_invalid_rules_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rule("1", data)
    assert err.value.field == field


def test_actions() -> None:
    assert parse_rule("1", rule(action="monitor")).action == "monitor"
    fb = parse_rule("1", rule(action={"fallback_model": "groq/llama-3.3-70b"}, alert_at=[0.9, 0.5]))
    assert (fb.action, fb.fallback_model) == ("fallback", "groq/llama-3.3-70b")
    assert [str(a) for a in fb.alert_at] == ["0.5", "0.9"]
