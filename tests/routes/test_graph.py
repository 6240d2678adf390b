from __future__ import annotations

from typing import Any

import pytest

from gateway.routes.graph import ModelStep, RouteError, validate, walk

GRAPH: dict[str, Any] = {
    "start": "tier",
    "elements": [
        {"id": "tier", "type": "conditional", "field": "metadata.tier", "equals": "pro", "true": "budget",
         "false": "split"},
        {"id": "split", "type": "percentage", "branches": [{"percent": 80, "next": "cheap"},
                                                             {"percent": 20, "next": "big"}]},
        {"id": "budget", "type": "budget", "rule": "pro-daily", "success": "big", "fallback": "cheap"},
        {"id": "big", "type": "model", "model": "anthropic/claude-opus-4.7", "timeout_ms": 5000, "retries": 1,
         "success": "end", "fallback": "cheap"},
        {"id": "cheap", "type": "model", "model": "groq/llama-3.3-70b", "success": "end"},
        {"id": "end", "type": "end"},
    ],
}


async def run(attrs: dict[str, Any], *, budget: bool = True, fail: set[str] = frozenset(),  # type: ignore[assignment]
              draw: float = 0.5) -> tuple[list[str], list[ModelStep]]:
    attempts: list[ModelStep] = []

    async def budget_ok(rule: str, models: list[str]) -> bool:
        assert rule == "pro-daily"
        return budget

    async def attempt(step: ModelStep) -> bool:
        attempts.append(step)
        return step.element_id not in fail

    visited = await walk(validate(GRAPH), attrs, budget_ok, attempt, draw=lambda: draw)
    return visited, attempts


async def test_conditional_budget_and_model_fallback() -> None:
    visited, attempts = await run({"metadata.tier": "pro"})
    assert visited == ["tier", "budget", "big", "end"]
    assert attempts[0].timeout_ms == 5000 and attempts[0].retries == 1
    visited, _ = await run({"metadata.tier": "pro"}, budget=False)
    assert visited == ["tier", "budget", "cheap", "end"]
    visited, attempts = await run({"metadata.tier": "pro"}, fail={"big"})
    assert [a.model for a in attempts] == ["anthropic/claude-opus-4.7", "groq/llama-3.3-70b"]


async def test_percentage_split_by_draw() -> None:
    assert (await run({}, draw=0.1))[0] == ["tier", "split", "cheap", "end"]
    assert (await run({}, draw=0.95))[0] == ["tier", "split", "big", "end"]


async def test_a_failed_model_without_fallback_ends_the_walk() -> None:
    visited, attempts = await run({}, draw=0.1, fail={"cheap"})
    assert visited == ["tier", "split", "cheap"] and len(attempts) == 1


def test_group_conditions_mean_membership() -> None:
    graph = validate({"start": "c", "elements": [
        {"id": "c", "type": "conditional", "field": "cf.user.groups", "equals": "staff", "true": "e", "false": "e"},
        {"id": "e", "type": "end"}]})
    assert graph["start"] == "c"


@pytest.mark.parametrize(
    ("graph", "field"),
    [
        ({"start": "x", "elements": []}, "start"),
        ({"start": "a", "elements": [{"id": "a", "type": "model", "model": "m", "success": "a"}]}, "elements[0].model"),
        ({"start": "a", "elements": [{"id": "a", "type": "loop"}]}, "elements[0].type"),
        ({"start": "a", "elements": [{"id": "a", "type": "model", "model": "a/b", "success": "a"}]}, "elements"),
        ({"start": "a", "elements": [{"id": "a", "type": "model", "model": "a/b", "success": "zz"}]}, "elements[0]"),
        ({"start": "a", "elements": [{"id": "a", "type": "percentage",
                                      "branches": [{"percent": 50, "next": "a"}]}]}, "elements[0].branches"),
        ({"start": "a", "elements": [{"id": "a", "type": "end"}, {"id": "a", "type": "end"}]}, "elements[1]"),
        ({"start": "a", "elements": [{"id": "a", "type": "model", "model": "a/b", "success": "e", "retries": 9},
                                     {"id": "e", "type": "end"}]}, "elements[0].retries"),
        ({"start": "a", "elements": [{"id": "a", "type": "model", "model": "a/b", "success": "e", "retries": 5},
                                     {"id": "e", "type": "end"}]}, "elements[0].retries"),  # 6 attempts: too many
        ({"start": "a", "elements": [  # a model after a model's success: the first answer is already sent
            {"id": "a", "type": "model", "model": "a/b", "success": "c"},
            {"id": "c", "type": "conditional", "field": "metadata.x", "equals": 1, "true": "e", "false": "b"},
            {"id": "b", "type": "model", "model": "c/d", "success": "e"}, {"id": "e", "type": "end"}]},
         "elements[0].success"),
    ],
)
def test_invalid_graphs_name_the_field(graph: dict[str, Any], field: str) -> None:
    with pytest.raises(RouteError) as err:
        validate(graph)
    assert err.value.field == field
