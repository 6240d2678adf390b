"""A dynamic route's graph: validation and walking.

A route version is `{"start": "<element id>", "elements": [...]}`. Elements (each has a unique `id`):

- `{"type": "conditional", "field": "metadata.tier" | "cf.user.groups" | ..., "equals": v, "true": id, "false": id}`
  (for a list field such as `cf.user.groups`, equals means "contains");
- `{"type": "percentage", "branches": [{"percent": 80, "next": id}, {"percent": 20, "next": id}]}`, percents
  summing to 100; the draw is uniform per request (injectable for tests);
- `{"type": "budget", "rule": "<spend-limit rule name>", "success": id, "fallback": id}`: `success` when the
  rule's bucket for this request still has budget left, else `fallback`;
- `{"type": "model", "model": "provider/model", "timeout_ms": n?, "retries": n?, "success": id, "fallback": id?}`:
  call the model; on failure (connection error, timeout, 429 or 5xx before any byte reached the client) go to
  `fallback`. `retries` is at most 4: the element runs through the router's `cf-aig-max-attempts`, which allows
  5 attempts (`cf-aig-max-attempts`); nothing sets no bound of its own, and a larger value would silently retry less;
- `{"type": "end"}`.

Walking a graph never loops: validation refuses cycles, so every walk ends within len(elements) steps. A model's
`success` path must not reach another model: the first model's answer has already gone to the client (the spec is
silent; walking on would start a second response on the same request).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.errors import RouteError
from gateway.providers.options import MAX_ATTEMPTS

TYPES = ("conditional", "percentage", "budget", "model", "end")
_EDGES = {"conditional": ("true", "false"), "budget": ("success", "fallback"), "model": ("success", "fallback")}


@dataclass(frozen=True)
class ModelStep:
    element_id: str
    model: str  # provider/model
    timeout_ms: int | None
    retries: int | None


def validate(graph: Any) -> dict[str, Any]:
    if not isinstance(graph, dict) or not isinstance(graph.get("elements"), list):
        raise RouteError("elements", 'a route is {"start": id, "elements": [...]}')
    elements: dict[str, dict[str, Any]] = {}
    for i, element in enumerate(graph["elements"]):
        where = f"elements[{i}]"
        if not isinstance(element, dict) or not isinstance(element.get("id"), str) or not element["id"]:
            raise RouteError(where, "every element needs a string id")
        if element["id"] in elements:
            raise RouteError(where, f"duplicate element id {element['id']!r}")
        if element.get("type") not in TYPES:
            raise RouteError(f"{where}.type", f"type must be one of {', '.join(TYPES)}")
        _validate_element(where, element)
        elements[element["id"]] = element
    start = graph.get("start")
    if start not in elements:
        raise RouteError("start", "start must name an element")
    for i, element in enumerate(graph["elements"]):
        for target in _targets(element):
            if target not in elements:
                raise RouteError(f"elements[{i}]", f"unknown element {target!r}")
    _refuse_cycles(start, elements)
    reaches: dict[str, bool] = {}
    for i, element in enumerate(graph["elements"]):
        if element["type"] == "model" and _reaches_model(element["success"], elements, reaches):
            raise RouteError(f"elements[{i}].success", "after a model answered the route can only end: its success "
                                                       "path must not reach another model")
    return {"start": start, "elements": graph["elements"]}


def _validate_element(where: str, e: dict[str, Any]) -> None:
    kind = e["type"]
    if kind == "conditional":
        if not isinstance(e.get("field"), str) or not isinstance(e.get("equals"), str | int | float | bool):
            raise RouteError(where, "a conditional needs a field and an equals value")
    elif kind == "percentage":
        branches = e.get("branches")
        if (not isinstance(branches, list) or not branches
                or not all(isinstance(b, dict) and isinstance(b.get("percent"), int | float) and b["percent"] >= 0
                           and isinstance(b.get("next"), str) for b in branches)
                or sum(b["percent"] for b in branches) != 100):
            raise RouteError(f"{where}.branches", "branches are [{percent, next}] with percents summing to 100")
    elif kind == "budget":
        if not isinstance(e.get("rule"), str):
            raise RouteError(f"{where}.rule", "a budget element names a spend-limit rule")
    elif kind == "model":
        model = e.get("model")
        if not isinstance(model, str) or "/" not in model.strip("/"):
            raise RouteError(f"{where}.model", 'model must be "provider/model"')
        for key, top in (("timeout_ms", 600_000), ("retries", MAX_ATTEMPTS - 1)):
            value = e.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top):
                raise RouteError(f"{where}.{key}", f"{key} must be an integer between 0 and {top}")
    for edge in _EDGES.get(kind, ()):
        required = not (kind == "model" and edge == "fallback")
        if (required or edge in e) and not isinstance(e.get(edge), str):
            raise RouteError(f"{where}.{edge}", f"{edge} must name an element")


def _targets(e: dict[str, Any]) -> list[str]:
    if e["type"] == "percentage":
        return [b["next"] for b in e["branches"]]
    return [e[edge] for edge in _EDGES.get(e["type"], ()) if edge in e]


def _reaches_model(node: str, elements: dict[str, dict[str, Any]], memo: dict[str, bool]) -> bool:
    """Is a model element reachable from `node` (itself included)? The graph is acyclic by now."""
    if node not in memo:
        element = elements[node]
        memo[node] = element["type"] == "model" or any(_reaches_model(t, elements, memo) for t in _targets(element))
    return memo[node]


def _refuse_cycles(start: str, elements: dict[str, dict[str, Any]]) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str) -> None:
        if state.get(node) == 1:
            raise RouteError("elements", f"the route loops through {node!r}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for target in _targets(elements[node]):
            visit(target)
        state[node] = 2

    visit(start)


BudgetCheck = Callable[[str, list[str]], Awaitable[bool]]  # (rule name, the models its success branch may call)


def models_from(node: str, elements: dict[str, dict[str, Any]]) -> list[str]:
    """The models of every model element reachable from `node` (itself included), in the order first found."""
    seen: set[str] = set()
    models: list[str] = []
    stack = [node]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        element = elements[current]
        if element["type"] == "model" and element["model"] not in models:
            models.append(element["model"])
        stack.extend(reversed(_targets(element)))
    return models
Attempt = Callable[[ModelStep], Awaitable[bool]]


async def walk(graph: dict[str, Any], attributes: dict[str, Any], budget_ok: BudgetCheck, attempt: Attempt,
               *, draw: Callable[[], float] = random.random) -> list[str]:
    """Walk the graph; `attempt` calls a model and says whether it succeeded. Returns the element ids visited."""
    elements = {e["id"]: e for e in graph["elements"]}
    node: str | None = graph["start"]
    visited: list[str] = []
    while node is not None:
        e = elements[node]
        visited.append(node)
        kind = e["type"]
        if kind == "end":
            return visited
        if kind == "conditional":
            value = attributes.get(e["field"])
            hit = e["equals"] in value if isinstance(value, list | tuple) else value == e["equals"]
            node = e["true"] if hit else e["false"]
        elif kind == "percentage":
            point, cumulative = draw() * 100, 0.0
            node = e["branches"][-1]["next"]
            for branch in e["branches"]:
                cumulative += branch["percent"]
                if point < cumulative:
                    node = branch["next"]
                    break
        elif kind == "budget":
            node = e["success"] if await budget_ok(e["rule"], models_from(e["success"], elements)) else e["fallback"]
        else:
            step = ModelStep(e["id"], e["model"], e.get("timeout_ms"), e.get("retries"))
            node = e["success"] if await attempt(step) else e.get("fallback")
    return visited
