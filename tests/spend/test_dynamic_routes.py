"""Dynamic routes end to end: the real OpenAI SDK against `/compat` with `model: "dynamic/<name>"`,
routes created, versioned and deployed through the admin API, fake providers behind a real gateway on a real
Postgres. Every attempt of a walk reserves and settles against its own model's rules."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion
from starlette.routing import Mount

from gateway.db import Database
from gateway.limits.invariants import assert_all_invariants
from gateway.middleware.dynamic_routes import DynamicRoutes
from harness.fakes import expected_reply
from tests.spend.conftest import Clock, SpendStack

MINI, BIG, LLAMA, HAIKU = "openai/gpt-4o-mini", "openai/gpt-4o", "groq/llama-3.3-70b-versatile", \
    "anthropic/claude-haiku-4-5"
MESSAGES: list[Any] = [{"role": "user", "content": "route me somewhere nice"}]
USAGE = {"x-fake-usage": json.dumps({"input": 7, "output": 100})}  # with max_tokens=100: $0.10, the worst case
END: dict[str, Any] = {"id": "done", "type": "end"}


# -- helpers ----------------------------------------------------------------------------------------------------


def model(element_id: str, name: str, *, success: str = "done", fallback: str | None = None,
          **options: int) -> dict[str, Any]:
    element: dict[str, Any] = {"id": element_id, "type": "model", "model": name, "success": success, **options}
    if fallback is not None:
        element["fallback"] = fallback
    return element


def graph(start: str, *elements: dict[str, Any]) -> dict[str, Any]:
    return {"start": start, "elements": [*elements, END]}


def create_route(stack: SpendStack, account: str, name: str, route: dict[str, Any]) -> dict[str, Any]:
    with stack.admin() as admin:
        answer = admin.post(f"/accounts/{account}/gateways/g/routes", json={"name": name, "graph": route})
    assert answer.status_code == 201, answer.text
    return answer.json()["result"]  # type: ignore[no-any-return]


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]  # case-insensitive (the SDK's Headers)
    body: Any  # the JSON error of a failed call
    completion: ChatCompletion | None = None

    @property
    def served(self) -> tuple[str, str, str, str]:
        """(element, step, provider, model) that served."""
        h = self.headers
        return h["cf-aig-route-element"], h["cf-aig-step"], h["cf-aig-provider"], h["cf-aig-model"]


def sdk(base: str) -> openai.AsyncOpenAI:
    """The SDK on the compat endpoint; the client's bearer key is passed through to each provider (BYOK)."""
    return openai.AsyncOpenAI(base_url=f"{base}/compat", api_key="sk-client", max_retries=0, timeout=15)


async def ask(client: openai.AsyncOpenAI, route: str, headers: dict[str, str] | None = None,
              **body: Any) -> Answer:
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=f"dynamic/{route}", messages=MESSAGES, max_tokens=100, extra_headers={**USAGE, **(headers or {})},
            **body)
    except openai.APIStatusError as exc:
        return Answer(exc.status_code, exc.response.headers, exc.response.json())
    return Answer(raw.http_response.status_code, raw.headers, None, raw.parse())


def recorded(stack: SpendStack, provider: str, key: str) -> list[str]:
    """Models the fake `provider` was asked for by requests carrying `x-fake-key: key`."""
    return [r.body["model"] for r in stack.recorder(provider).requests if r.headers.get("x-fake-key") == key]


def unique() -> str:
    return uuid.uuid4().hex


async def settled(stack: SpendStack, account: str, rule_id: str) -> list[dict[str, Any]]:
    """The rule's buckets once nothing is pending any more (settlement follows the last byte by a moment)."""
    buckets: list[dict[str, Any]] = []
    for _ in range(50):
        buckets = stack.buckets(account, rule_id)
        if all(b["pending_usd"] == "0.00" for b in buckets):
            return buckets
        await asyncio.sleep(0.1)
    raise AssertionError(f"still pending: {buckets}")


def _dynamic_layer(stack: SpendStack) -> DynamicRoutes:
    """The gateway's DynamicRoutes instance (the /v1 chain is built on its first request)."""
    chain: Any = next(r.app for r in stack.gateway.app.routes if isinstance(r, Mount) and r.path == "/v1")
    if chain._app is None:
        httpx.get(f"{stack.gateway.url}/v1/")
    layer: Any = chain._app
    while not isinstance(layer, DynamicRoutes):
        layer = layer.app
    return layer


@pytest.fixture
def draws(spend_stack: SpendStack) -> Iterator[list[float]]:
    """The percentage draws the gateway will make, in order (a draw the test did not queue fails the request)."""
    layer = _dynamic_layer(spend_stack)
    queued: list[float] = []
    original: Callable[[], float] = layer.draw
    layer.draw = lambda: queued.pop(0)
    try:
        yield queued
    finally:
        layer.draw = original


async def nothing_pending(stack: SpendStack, db: Database, account: str) -> None:
    """Every bucket of the account's rules (any window) and its credit balance hold nothing pending."""
    pending: Any = None
    for _ in range(50):
        pending = await db.pool.fetchrow(
            """SELECT coalesce(sum(b.pending), 0) AS buckets,
                      (SELECT count(*) FROM limits.reservations v, jsonb_array_elements(v.lines) l
                        WHERE v.settled_at IS NULL AND (l->>'rule_id')::uuid IN
                              (SELECT id FROM limits.rules WHERE account_id = $1)) AS open
                 FROM limits.buckets b JOIN limits.rules r ON r.id = b.rule_id WHERE r.account_id = $1""",
            account)
        if (pending["buckets"], pending["open"]) == (0, 0) and Decimal(stack.credits(account)["pending_usd"]) == 0:
            break
        await asyncio.sleep(0.1)
    assert (pending["buckets"], pending["open"]) == (0, 0), dict(pending)
    assert Decimal(stack.credits(account)["pending_usd"]) == 0
    with stack.admin() as admin:
        for rule in admin.get(f"/accounts/{account}/gateways/g/spend-limits").json()["result"]:
            assert all(b["pending_usd"] == "0.00" for b in rule["buckets"]), rule


@pytest.fixture
async def stack(spend_stack: SpendStack, db: Database, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SpendStack]:
    """The spend stack; after the test nothing the test's accounts reserved is still pending, and the limit and
    ledger invariants hold."""
    accounts: list[str] = []
    new_gateway = spend_stack.new_gateway

    def tracked(**settings: Any) -> tuple[str, str]:
        account, base = new_gateway(**settings)
        accounts.append(account)
        return account, base

    monkeypatch.setattr(spend_stack, "new_gateway", tracked)
    yield spend_stack
    for account in accounts:
        await nothing_pending(spend_stack, db, account)
    await assert_all_invariants(db)


# -- model elements ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "provider", "name"), [(MINI, "openai", "gpt-4o-mini"),
                                                          (HAIKU, "anthropic", "claude-haiku-4-5")])
async def test_model_element_serves_with_route_headers(stack: SpendStack, target: str, provider: str,
                                                       name: str) -> None:
    account, base = stack.new_gateway()
    create_route(stack, account, "simple", graph("m", model("m", target)))
    async with sdk(base) as client:
        answer = await ask(client, "simple")
    assert answer.status == 200 and answer.completion is not None
    h = answer.headers
    assert (h["cf-aig-route"], h["cf-aig-route-version"]) == ("simple", "1")
    assert answer.served == ("m", "0", provider, name)
    assert h["cf-aig-cost"] == "0.1"
    kind = "openai" if provider == "openai" else "anthropic"
    sent = stack.recorder(provider).last.body
    assert sent["model"] == name  # the element's model went upstream, not "dynamic/simple"
    assert answer.completion.choices[0].message.content == expected_reply(kind, sent)
    assert answer.completion.usage is not None and answer.completion.usage.completion_tokens == 100


async def test_conditional_on_metadata(stack: SpendStack) -> None:
    account, base = stack.new_gateway()
    create_route(stack, account, "tiered", graph(
        "tier",
        {"id": "tier", "type": "conditional", "field": "metadata.tier", "equals": "pro", "true": "big",
         "false": "level"},
        {"id": "level", "type": "conditional", "field": "metadata.level", "equals": 3, "true": "llama",
         "false": "mini"},
        model("big", BIG), model("llama", LLAMA), model("mini", MINI)))

    async def element(metadata: dict[str, Any] | None) -> str:
        headers = {"cf-aig-metadata": json.dumps(metadata)} if metadata is not None else {}
        answer = await ask(client, "tiered", headers)
        assert answer.status == 200, answer.body
        return answer.served[0]

    async with sdk(base) as client:
        assert await element({"tier": "pro"}) == "big"
        assert await element({"tier": "free"}) == "mini"
        assert await element({"tier": "free", "level": 3}) == "llama"  # a number compares as a number
        assert await element({"level": "3"}) == "mini"
        assert await element(None) == "mini"
        # a client cannot steer an identity conditional through metadata: reserved keys are refused
        spoofed = await ask(client, "tiered", {"cf-aig-metadata": json.dumps({"cf.user.groups": "interns"})})
    assert spoofed.status == 400 and "cf-aig-metadata" in json.dumps(spoofed.body)


async def test_conditional_on_identity_groups(stack: SpendStack) -> None:
    account, base = stack.new_gateway()
    create_route(stack, account, "by-group", graph(
        "who",
        {"id": "who", "type": "conditional", "field": "cf.user.groups", "equals": "interns", "true": "cheap",
         "false": "best"},
        model("cheap", LLAMA), model("best", BIG)))
    intern = stack.idp.token(groups=["staff", "interns"], sub="intern-1")
    staff = stack.idp.token(groups=["staff"], sub="staff-1")
    async with sdk(base) as client:
        as_intern = await ask(client, "by-group", {"cf-access-jwt-assertion": intern})
        as_staff = await ask(client, "by-group", {"cf-access-jwt-assertion": staff})
        anonymous = await ask(client, "by-group")
        forged = await ask(client, "by-group", {"cf-access-jwt-assertion": intern[:-4] + "AAAA"})
    assert as_intern.served == ("cheap", "0", "groq", "llama-3.3-70b-versatile")
    assert as_staff.served[0] == "best" and anonymous.served[0] == "best"
    assert forged.status == 401  # an invalid JWT never reaches the walk


async def test_percentage_split_follows_the_draw(stack: SpendStack, draws: list[float]) -> None:
    account, base = stack.new_gateway()
    create_route(stack, account, "split", graph(
        "p", {"id": "p", "type": "percentage", "branches": [{"percent": 80, "next": "a"}, {"percent": 0, "next": "z"},
                                                             {"percent": 20, "next": "b"}]},
        model("a", MINI), model("b", LLAMA), model("z", BIG)))
    points = [0.0, 0.25, 0.7999, 0.8, 0.95, 0.99999]
    draws.extend(points)
    async with sdk(base) as client:
        served = [(await ask(client, "split")).served[0] for _ in points]
    assert served == ["a", "a", "a", "b", "b", "b"]  # [0, 80) → a, [80, 100) → b, the 0 % branch never
    assert draws == []  # one draw per request


async def test_percentage_split_with_the_real_draw(stack: SpendStack) -> None:
    """Without an injected draw: a 0 % branch is never taken, and a 50/50 split over 40 requests takes both
    branches (the chance that it does not is 2 * 2^-40)."""
    account, base = stack.new_gateway()
    create_route(stack, account, "coin", graph(
        "p", {"id": "p", "type": "percentage", "branches": [{"percent": 50, "next": "a"}, {"percent": 0, "next": "z"},
                                                             {"percent": 50, "next": "b"}]},
        model("a", MINI), model("b", LLAMA), model("z", BIG)))
    async with sdk(base) as client:
        answers = await asyncio.gather(*(ask(client, "coin") for _ in range(40)))
    served = [a.served[0] for a in answers]
    assert set(served) == {"a", "b"}, served


async def test_budget_element_until_the_rule_is_spent(stack: SpendStack, clock: Clock) -> None:
    """A monitor rule never blocks a call itself; the route's budget element reads it to pick the model."""
    account, base = stack.new_gateway()
    rule = stack.rule(account, name="premium", budget_usd="0.20", window="daily", action="monitor",
                      scope={"metadata.user": {"split": True}})
    create_route(stack, account, "budgeted", graph(
        "b", {"id": "b", "type": "budget", "rule": "premium", "success": "big", "fallback": "cheap"},
        model("big", BIG), model("cheap", MINI)))
    create_route(stack, account, "no-rule", graph(
        "b", {"id": "b", "type": "budget", "rule": "no-such-rule", "success": "big", "fallback": "cheap"},
        model("big", BIG), model("cheap", MINI)))

    async def element(user: str, route: str = "budgeted") -> str:
        answer = await ask(client, route, {"cf-aig-metadata": json.dumps({"user": user})})
        assert answer.status == 200, answer.body
        return answer.served[0]

    async with sdk(base) as client:
        assert [await element("ada") for _ in range(3)] == ["big", "big", "cheap"]  # $0.20 left, then none
        assert await element("bob") == "big"  # bob's bucket is his own
        assert await element("ada", "no-rule") == "big"  # no such rule: no limit applies
        spent = {b["key"]["metadata.user"]: b["spent_usd"] for b in await settled(stack, account, rule["id"])}
        assert spent == {"ada": "0.40", "bob": "0.10"}  # the rule counts every call of the user's, on any route
        clock.advance(hours=12)  # 00:00 UTC: the daily window resets
        assert await element("ada") == "big"
    [bucket] = await settled(stack, account, rule["id"])
    assert (bucket["key"], bucket["spent_usd"]) == ({"metadata.user": "ada"}, "0.10")


async def test_timeout_falls_back(stack: SpendStack) -> None:
    account, base = stack.new_gateway()
    create_route(stack, account, "hurry", graph("slow", model("slow", MINI, timeout_ms=300, fallback="fast"),
                                                model("fast", LLAMA)))
    key = unique()
    slow = {"x-fake-delay-ms": "5000", "x-fake-only-model": "gpt-4o-mini", "x-fake-key": key}
    async with sdk(base) as client:
        began = time.monotonic()
        answer = await ask(client, "hurry", slow)
        elapsed = time.monotonic() - began
    assert answer.status == 200, answer.body
    assert answer.served == ("fast", "1", "groq", "llama-3.3-70b-versatile")
    assert elapsed < 3, elapsed  # the slow upstream would have taken 5 s
    assert recorded(stack, "openai", key) == ["gpt-4o-mini"] and recorded(stack, "groq", key) == [
        "llama-3.3-70b-versatile"]


async def test_retries_then_served_or_fallback(stack: SpendStack) -> None:
    account, base = stack.new_gateway()
    create_route(stack, account, "retry2", graph("flaky", model("flaky", MINI, retries=2, fallback="backup"),
                                                 model("backup", LLAMA)))
    create_route(stack, account, "retry1", graph("flaky", model("flaky", MINI, retries=1, fallback="backup"),
                                                 model("backup", LLAMA)))

    def failing_twice(key: str) -> dict[str, str]:
        return {"x-fake-fail-times": "2", "x-fake-fail-status": "500", "x-fake-key": key,
                "x-fake-only-model": "gpt-4o-mini"}

    async with sdk(base) as client:
        key2, key1 = unique(), unique()
        on_retry = await ask(client, "retry2", failing_twice(key2))
        fell_back = await ask(client, "retry1", failing_twice(key1))
    assert on_retry.served == ("flaky", "0", "openai", "gpt-4o-mini")  # the third attempt succeeded
    assert recorded(stack, "openai", key2) == ["gpt-4o-mini"] * 3 and recorded(stack, "groq", key2) == []
    assert fell_back.served == ("backup", "1", "groq", "llama-3.3-70b-versatile")
    assert recorded(stack, "openai", key1) == ["gpt-4o-mini"] * 2 and len(recorded(stack, "groq", key1)) == 1


@pytest.mark.parametrize("status", [500, 429, 503])
async def test_failure_without_fallback_reaches_the_client(stack: SpendStack, status: int) -> None:
    account, base = stack.new_gateway()
    create_route(stack, account, "only", graph("m", model("m", MINI)))
    async with sdk(base) as client:
        answer = await ask(client, "only", {"x-fake-status": str(status)})
    assert answer.status == status
    assert answer.body["error"]["message"] == f"fake error {status}"
    assert answer.headers["cf-aig-route"] == "only" and answer.headers["cf-aig-route-element"] == "m"


async def test_every_model_failing_replays_the_last_failure(stack: SpendStack) -> None:
    account, base = stack.new_gateway()
    create_route(stack, account, "doomed", graph(
        "first", model("first", MINI, fallback="second"), model("second", LLAMA, fallback="done")))
    key = unique()
    async with sdk(base) as client:
        answer = await ask(client, "doomed", {"x-fake-status": "503", "x-fake-key": key})
    assert answer.status == 503 and answer.body["error"]["message"] == "fake error 503"
    assert answer.headers["cf-aig-route"] == "doomed" and answer.headers["cf-aig-route-element"] == "second"
    assert answer.headers["cf-aig-step"] == "1" and answer.headers["cf-aig-provider"] == "groq"
    assert recorded(stack, "openai", key) == ["gpt-4o-mini"] and len(recorded(stack, "groq", key)) == 1


async def test_walk_without_any_model_is_502(stack: SpendStack) -> None:
    account, base = stack.new_gateway()
    create_route(stack, account, "nowhere", {"start": "done", "elements": [END]})
    create_route(stack, account, "gated", graph(
        "ok", {"id": "ok", "type": "conditional", "field": "metadata.allowed", "equals": True, "true": "m",
               "false": "done"}, model("m", MINI)))
    async with sdk(base) as client:
        nowhere = await ask(client, "nowhere")
        gated = await ask(client, "gated")
        allowed = await ask(client, "gated", {"cf-aig-metadata": '{"allowed": true}'})
    assert nowhere.status == 502 and nowhere.body == {
        "success": False, "error": {"message": "dynamic route 'nowhere' ended without calling a model"}}
    assert gated.status == 502
    assert gated.body["error"]["message"] == "dynamic route 'gated' ended without calling a model"
    assert allowed.status == 200 and allowed.served[0] == "m"


# -- versions ---------------------------------------------------------------------------------------------------


async def test_versions_and_deploy(stack: SpendStack) -> None:
    account, base = stack.new_gateway()
    routes = f"/accounts/{account}/gateways/g/routes"
    created = create_route(stack, account, "main", graph("m", model("m", MINI)))
    assert (created["version"], created["deployed_version"]) == (1, 1)
    with stack.admin() as admin:
        bad = admin.post(f"{routes}/main/versions", json={"graph": graph("m", model("m", "no-provider"))})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "elements[0].model"
        # a model after a model's success would answer the same request twice
        twice = admin.post(f"{routes}/main/versions", json={"graph": graph(
            "m", model("m", MINI, success="n"), model("n", LLAMA))})
        assert twice.status_code == 422 and twice.json()["error"]["field"] == "elements[0].success"
        v2 = admin.post(f"{routes}/main/versions", json={"graph": graph("n", model("n", LLAMA))})
        assert v2.status_code == 201 and v2.json()["result"]["version"] == 2
    async with sdk(base) as client:
        before = await ask(client, "main")
        with stack.admin() as admin:
            versions = admin.get(f"{routes}/main/versions").json()["result"]
            assert [(v["version"], v["deployed"]) for v in versions] == [(1, True), (2, False)]
            assert admin.post(f"{routes}/main/deploy", json={"version": 9}).status_code == 404
            deployed = admin.post(f"{routes}/main/deploy", json={"version": 2})
            assert deployed.status_code == 200 and deployed.json()["result"]["deployed_version"] == 2
            assert admin.get(f"{routes}/main").json()["result"]["deployed_version"] == 2
        after = await ask(client, "main")
        with stack.admin() as admin:
            assert admin.post(f"{routes}/main/deploy", json={"version": 1}).status_code == 200
        rolled_back = await ask(client, "main")
        unknown = await ask(client, "nope")
    assert before.headers["cf-aig-route-version"] == "1" and before.served == ("m", "0", "openai", "gpt-4o-mini")
    assert after.headers["cf-aig-route-version"] == "2" and after.served == ("n", "0", "groq",
                                                                              "llama-3.3-70b-versatile")
    assert rolled_back.headers["cf-aig-route-version"] == "1" and rolled_back.served[0] == "m"
    assert unknown.status == 404 and unknown.body == {"success": False,
                                                      "error": {"message": "unknown dynamic route 'nope'"}}


# -- spend ------------------------------------------------------------------------------------------------------


async def test_each_attempt_reserves_and_settles_against_its_own_model(stack: SpendStack, clock: Clock) -> None:
    """Unified billing (credits) with a block rule per model. A failed or timed-out attempt settles at $0 in its
    own model's bucket; a spend-limit 429 on the primary is a failed attempt too, so the route falls back."""
    account, base = stack.new_gateway(credits_usd="10")
    mini = stack.rule(account, name="mini", budget_usd="0.20", window="daily", scope={"model": {"equals": MINI}})
    llama = stack.rule(account, name="llama", budget_usd="1.00", window="daily", scope={"model": {"equals": LLAMA}})
    create_route(stack, account, "spend", graph("m", model("m", MINI, timeout_ms=400, fallback="f"),
                                                model("f", LLAMA)))
    unified = {"Authorization": ""}  # no client key: the gateway's keys, debiting credits
    async with sdk(base) as client:
        served = [(await ask(client, "spend", {**unified, **extra})) for extra in (
            {},  # mini serves: $0.10 in mini
            {"x-fake-status": "500", "x-fake-only-model": "gpt-4o-mini"},  # mini fails → llama
            {"x-fake-delay-ms": "3000", "x-fake-only-model": "gpt-4o-mini"},  # mini times out → llama
            {},  # mini serves: $0.20 in mini, spent
            {},  # mini refused by its rule (429) → llama
        )]
    assert [a.served[:2] for a in served] == [("m", "0"), ("f", "1"), ("f", "1"), ("m", "0"), ("f", "1")]
    assert [a.headers["cf-aig-cost"] for a in served] == ["0.1"] * 5
    assert served[0].headers["cf-aig-budget-remaining"] == "0.10"
    assert served[4].headers["cf-aig-budget-remaining"] == "0.70"  # llama's bucket after its 3rd reservation
    [mini_bucket] = await settled(stack, account, mini["id"])
    [llama_bucket] = await settled(stack, account, llama["id"])
    assert (mini_bucket["spent_usd"], llama_bucket["spent_usd"]) == ("0.20", "0.30")
    credits = stack.credits(account)
    assert credits["balance_usd"] == "9.50" and Decimal(credits["pending_usd"]) == 0


async def test_concurrent_burst_splits_exactly_at_the_budget(stack: SpendStack, clock: Clock) -> None:
    """20 concurrent requests, the primary's rule covers 5: exactly 5 served by it, 15 by the fallback."""
    account, base = stack.new_gateway()
    mini = stack.rule(account, name="mini", budget_usd="0.50", window="daily", scope={"model": {"equals": MINI}})
    create_route(stack, account, "burst", graph("m", model("m", MINI, fallback="f"), model("f", LLAMA)))
    async with sdk(base) as client:
        answers = await asyncio.gather(*(ask(client, "burst") for _ in range(20)))
    elements = [a.served[0] for a in answers]
    assert elements.count("m") == 5 and elements.count("f") == 15, elements
    [bucket] = await settled(stack, account, mini["id"])
    assert bucket["spent_usd"] == "0.50" and bucket["remaining_usd"] == "0.00"


async def test_streaming_through_a_route_settles(stack: SpendStack) -> None:
    """A stream served by the fallback after the primary failed, translated from Anthropic's events."""
    account, base = stack.new_gateway(credits_usd="5")
    rule = stack.rule(account, name="all", budget_usd="2.00", window="daily")
    create_route(stack, account, "stream", graph("m", model("m", MINI, fallback="f"), model("f", HAIKU)))
    primary_fails = {**USAGE, "Authorization": "", "x-fake-status": "500", "x-fake-only-model": "gpt-4o-mini",
                     "x-fake-chunk-delay-ms": "10"}
    async with sdk(base) as client:
        async with client.chat.completions.with_streaming_response.create(
                model="dynamic/stream", messages=MESSAGES, max_tokens=100, stream=True,
                stream_options={"include_usage": True}, extra_headers=primary_fails) as response:
            assert response.http_response.status_code == 200
            headers = response.headers
            chunks = [chunk async for chunk in await response.parse()]
        plain = await ask(client, "stream", {"Authorization": ""})  # and one that the primary serves
    assert (headers["cf-aig-route"], headers["cf-aig-route-element"], headers["cf-aig-step"]) == ("stream", "f", "1")
    assert headers["cf-aig-provider"] == "anthropic" and "text/event-stream" in headers["content-type"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_reply("anthropic", stack.recorder("anthropic").last.body)
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 100
    assert plain.served[0] == "m"
    [bucket] = await settled(stack, account, rule["id"])
    assert bucket["spent_usd"] == "0.20"
    credits = stack.credits(account)
    assert credits["balance_usd"] == "4.80" and Decimal(credits["pending_usd"]) == 0


async def test_one_log_row_per_dynamic_request(stack: SpendStack) -> None:
    account, base = stack.new_gateway()
    create_route(stack, account, "logged", graph("m", model("m", MINI, fallback="f"), model("f", LLAMA)))
    async with sdk(base) as client:
        first = await ask(client, "logged")
        second = await ask(client, "logged", {"x-fake-status": "500", "x-fake-only-model": "gpt-4o-mini"})
    ids = {first.headers["cf-aig-log-id"]: ("gpt-4o-mini", 0), second.headers["cf-aig-log-id"]: (
        "llama-3.3-70b-versatile", 1)}
    rows: list[dict[str, Any]] = []
    with stack.admin() as admin:
        for _ in range(50):  # rows are written in batches
            rows = admin.get(f"/accounts/{account}/gateways/g/logs").json()["result"]
            if len(rows) >= 2:
                break
            await asyncio.sleep(0.1)
    assert {r["id"]: (r["model"], r["step"]) for r in rows} == ids
    assert all(r["status_code"] == 200 and r["success"] and Decimal(r["cost_usd"]) == Decimal("0.10")
               for r in rows), rows


async def test_retries_are_bounded_by_the_attempts_the_router_allows(stack: SpendStack) -> None:
    """retries: 4 is five attempts, the most `cf-aig-max-attempts` allows; 5 is refused rather than cut short."""
    account, base = stack.new_gateway()
    with stack.admin() as admin:
        refused = admin.post(f"/accounts/{account}/gateways/g/routes",
                             json={"name": "retry5", "graph": graph("flaky", model("flaky", MINI, retries=5))})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "elements[0].retries"
    create_route(stack, account, "retry4", graph("flaky", model("flaky", MINI, retries=4)))
    key = unique()
    async with sdk(base) as client:
        answer = await ask(client, "retry4", {"x-fake-fail-times": "4", "x-fake-key": key})
    assert answer.status == 200, answer.body
    assert recorded(stack, "openai", key) == ["gpt-4o-mini"] * 5
