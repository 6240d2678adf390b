"""Guardrails through HTTP, with the real SDKs against the fake providers (which record what they received).

The fakes answer "Hello from fake-<format>: " and the last six words of the prompt, one word per streamed event: a
number with spaces in it ("+1 415 555 0132") reaches the client split across several events, which is what the
stream redaction must see through."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from gateway.guardrails.payload import redact_json
from gateway.guardrails.policy import resolve
from tests.eventually import eventually_sync
from tests.guardrails.conftest import Stack

EMAIL = "jane.doe@example.com"
PHONE = "+1 415 555 0132"  # four words: four events in a stream
CARD = "4539 1488 0343 6467"  # Luhn-valid, not a published test number
AWS = "AKIAIOSFODNN7EXAMPLE"
REDACT_PII = {"pii.*": "redact"}


OPENED: list[Any] = []  # every SDK client a test made, closed after it (their sockets with them)


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def oai(stack: Stack, account: str) -> openai.OpenAI:
    client = openai.OpenAI(base_url=stack.base(account) + "/openai", api_key="sk-client", max_retries=0)
    OPENED.append(client)
    return client


def claude(stack: Stack, account: str) -> anthropic.Anthropic:
    client = anthropic.Anthropic(base_url=stack.base(account) + "/anthropic", api_key="sk-ant-client", max_retries=0)
    OPENED.append(client)
    return client


def gemini(stack: Stack, account: str) -> genai.Client:
    client = genai.Client(api_key="g-client", http_options=genai_types.HttpOptions(
        base_url=stack.base(account) + "/google-ai-studio", api_version="v1beta"))
    OPENED.append(client)
    return client


def logged(stack: Stack, account: str, count: int = 1) -> list[dict[str, Any]]:
    return eventually_sync(lambda: stack.logs(account), until=lambda rows: len(rows) >= count)


# -- prompts ---------------------------------------------------------------------------------------------------


def test_prompt_redacted_before_openai_chat_and_the_provider_gets_exactly_the_redacted_call(stack: Stack) -> None:
    account = stack.guarded({"prompt": REDACT_PII})
    messages = [{"role": "system", "content": f"The user's phone is {PHONE}."},
                {"role": "user", "content": [{"type": "text", "text": f"write to {EMAIL} about card {CARD}"}]}]
    answer = oai(stack, account).chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    received = stack.recorder("openai").last.json
    # differential: what the provider got is the client's body with each finding replaced, nothing else changed
    expected = redact_json({"messages": messages}, resolve(REDACT_PII).rules(stop=False), {})  # type: ignore[union-attr]
    assert received["messages"] == expected["messages"]
    sent = json.dumps(received)
    assert EMAIL not in sent and "4539" not in sent and "415 555" not in sent
    assert "[REDACTED:pii.email]" in sent and "[REDACTED:pii.card]" in sent and "[REDACTED:pii.phone]" in sent
    assert "[REDACTED:pii.card]" in (answer.choices[0].message.content or "")  # the model saw the redacted text
    row = logged(stack, account)[0]
    assert row["guardrails"] == {"prompt": {"pii.card": "redact", "pii.email": "redact", "pii.phone": "redact"}}
    assert EMAIL not in row["request_body"] and "4539" not in row["request_body"]
    assert row["status_code"] == 200 and row["success"] is True


def test_prompt_redacted_in_responses_anthropic_and_gemini_shapes(stack: Stack) -> None:
    account = stack.guarded({"prompt": {"pii.email": "redact", "secret.*": "redact"}})
    oai(stack, account).responses.create(model="gpt-4o-mini", instructions=f"Reply to {EMAIL}",
                                         input=[{"role": "user", "content": [{"type": "input_text",
                                                                              "text": f"key {AWS}"}]}])
    got = json.dumps(stack.recorder("openai").last.json)
    assert EMAIL not in got and AWS not in got and "[REDACTED:secret.aws]" in got

    claude(stack, account).messages.create(
        model="claude-sonnet-4-6", max_tokens=50, system=[{"type": "text", "text": f"Owner: {EMAIL}"}],
        messages=[{"role": "user", "content": [{"type": "text", "text": f"my key is {AWS}"}]}])
    body = stack.recorder("anthropic").last.json
    assert body["system"][0]["text"] == "Owner: [REDACTED:pii.email]"
    assert body["messages"][0]["content"][0]["text"] == "my key is [REDACTED:secret.aws]"

    google = gemini(stack, account)  # kept: the SDK closes its HTTP client with the object
    google.models.generate_content(
        model="gemini-2.5-flash", contents=f"mail {EMAIL} the key {AWS}",
        config=genai_types.GenerateContentConfig(system_instruction=f"CC {EMAIL}"))
    body = stack.recorder("google-ai-studio").last.json
    assert body["contents"][0]["parts"][0]["text"] == "mail [REDACTED:pii.email] the key [REDACTED:secret.aws]"
    assert body["systemInstruction"]["parts"][0]["text"] == "CC [REDACTED:pii.email]"


def test_prompt_redacted_on_the_compat_endpoint(stack: Stack) -> None:
    account = stack.guarded({"prompt": REDACT_PII})
    client = openai.OpenAI(base_url=stack.base(account) + "/compat", api_key="sk-ant-client", max_retries=0)
    OPENED.append(client)
    client.chat.completions.create(model="anthropic/claude-sonnet-4-6", max_tokens=20,
                                   messages=[{"role": "user", "content": f"ping {EMAIL}"}])
    body = stack.recorder("anthropic").last.json
    assert json.dumps(body).count("[REDACTED:pii.email]") == 1 and EMAIL not in json.dumps(body)


def test_prompt_blocked_with_2016_nothing_forwarded(stack: Stack) -> None:
    account = stack.guarded({"prompt": {"pii.*": "redact", "secret.*": "block"}})
    before = len(stack.recorder("openai").requests)
    with pytest.raises(openai.BadRequestError) as caught:
        oai(stack, account).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"{EMAIL} uses {AWS}"}])
    assert caught.value.status_code == 400
    assert caught.value.body == {"code": 2016, "message": "Prompt blocked due to security configurations",
                                 "categories": ["secret.aws"]}
    assert json.loads(caught.value.response.text) == {
        "success": False, "error": {"code": 2016, "message": "Prompt blocked due to security configurations",
                                    "categories": ["secret.aws"]}}
    assert len(stack.recorder("openai").requests) == before  # nothing forwarded
    with pytest.raises(anthropic.BadRequestError):
        claude(stack, account).messages.create(model="claude-sonnet-4-6", max_tokens=10,
                                               messages=[{"role": "user", "content": f"key {AWS}"}])
    google = gemini(stack, account)
    with pytest.raises(genai_errors.ClientError) as gemini_caught:
        google.models.generate_content(model="gemini-2.5-flash", contents=f"key {AWS}")
    assert gemini_caught.value.code == 400
    rows = logged(stack, account, 3)
    assert all(r["status_code"] == 400 and r["cost_usd"] is None and r["tokens_in"] is None for r in rows)
    assert all(r["guardrails"]["prompt"]["secret.aws"] == "block" for r in rows)
    assert all(AWS not in (r["request_body"] or "") for r in rows)


def test_prompt_flagged_is_forwarded_unchanged_and_logged(stack: Stack) -> None:
    account = stack.guarded({"prompt": {"*": "flag"}})
    oai(stack, account).chat.completions.create(model="gpt-4o-mini",
                                                messages=[{"role": "user", "content": f"hi {EMAIL}"}])
    assert stack.recorder("openai").last.json["messages"][0]["content"] == f"hi {EMAIL}"
    row = logged(stack, account)[0]
    assert row["guardrails"] == {"prompt": {"pii.email": "flag"}}
    assert EMAIL not in row["request_body"]  # the log never keeps a finding, flagged ones included


# -- answers ---------------------------------------------------------------------------------------------------


def test_json_answer_redacted_for_the_client(stack: Stack) -> None:
    account = stack.guarded({"response": REDACT_PII})
    raw = oai(stack, account).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"mail {EMAIL} or {PHONE}"}])
    assert stack.recorder("openai").last.json["messages"][0]["content"] == f"mail {EMAIL} or {PHONE}"  # as sent
    text = raw.parse().choices[0].message.content
    assert text == "Hello from fake-openai: [REDACTED:pii.email] or [REDACTED:pii.phone]"
    assert int(raw.headers["content-length"]) == len(raw.http_response.content)
    row = logged(stack, account)[0]
    assert row["guardrails"] == {"response": {"pii.email": "redact", "pii.phone": "redact"}}
    assert "415" not in row["response_body"] and EMAIL not in row["response_body"]


def test_json_answer_blocked_with_2017_and_billed(stack: Stack) -> None:
    account = stack.guarded({"response": {"pii.card": "block"}})
    with pytest.raises(openai.BadRequestError) as caught:
        oai(stack, account).chat.completions.create(model="gpt-4o-mini",
                                                    messages=[{"role": "user", "content": f"say {CARD}"}])
    assert caught.value.body == {"code": 2017, "message": "Response blocked due to security configurations",
                                 "categories": ["pii.card"]}
    assert "4539" not in caught.value.response.text
    row = logged(stack, account)[0]
    assert row["status_code"] == 400 and row["success"] is False
    assert row["tokens_out"] is not None and row["cost_usd"] is not None  # the provider answered: billed
    assert row["guardrails"] == {"response": {"pii.card": "block"}}


def _openai_stream(stack: Stack, account: str, prompt: str) -> list[str]:
    chunks = oai(stack, account).chat.completions.create(model="gpt-4o-mini", stream=True,
                                                         messages=[{"role": "user", "content": prompt}])
    return [c.choices[0].delta.content or "" for c in chunks if c.choices]


def test_openai_stream_redacted_across_events(stack: Stack) -> None:
    account = stack.guarded({"response": REDACT_PII})
    deltas = _openai_stream(stack, account, f"card {CARD} now")
    assert "".join(deltas) == "Hello from fake-openai: card [REDACTED:pii.card] now"
    assert not any(digit in d for d in deltas for digit in "0123456789")  # no piece of the number got out
    row = logged(stack, account)[0]
    assert row["guardrails"] == {"response": {"pii.card": "redact"}}
    assert "4539" not in row["response_body"] and "[REDACTED:pii.card]" in row["response_body"]


def test_anthropic_gemini_and_responses_streams_redacted_across_events(stack: Stack) -> None:
    account = stack.guarded({"response": REDACT_PII})
    prompt = f"call {PHONE} today"
    with claude(stack, account).messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                                 messages=[{"role": "user", "content": prompt}]) as stream:
        text = "".join(stream.text_stream)
    assert text == "Hello from fake-anthropic: call [REDACTED:pii.phone] today"
    google = gemini(stack, account)
    pieces = [c.text or "" for c in google.models.generate_content_stream(model="gemini-2.5-flash", contents=prompt)]
    assert "".join(pieces) == "Hello from fake-gemini: call [REDACTED:pii.phone] today"
    events = list(oai(stack, account).responses.create(model="gpt-4o-mini", input=prompt, stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Hello from fake-openai: call [REDACTED:pii.phone] today"
    done = next(e for e in events if e.type == "response.output_text.done")
    assert done.text == deltas  # the whole text redacted alike
    completed = events[-1]
    assert completed.type == "response.completed" and "415" not in completed.model_dump_json()


def test_flag_only_stream_passes_untouched_and_logs_the_category(stack: Stack) -> None:
    account = stack.guarded({"response": {"pii.*": "flag"}})
    deltas = _openai_stream(stack, account, f"call {PHONE}")
    assert "".join(deltas) == f"Hello from fake-openai: call {PHONE}"
    row = logged(stack, account)[0]
    assert row["guardrails"] == {"response": {"pii.phone": "flag"}}
    assert "415" not in row["response_body"]


def test_stream_blocked_ends_with_a_2017_error_event(stack: Stack) -> None:
    account = stack.guarded({"response": {"pii.card": "block"}})
    seen: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in oai(stack, account).chat.completions.create(
                model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": f"card {CARD} ok"}]):
            seen += [c.delta.content or "" for c in chunk.choices]
    assert caught.value.body == {"code": 2017, "message": "Response blocked due to security configurations",
                                 "categories": ["pii.card"]}
    assert "".join(seen) == "Hello from fake-openai: card "  # up to the match, nothing of it
    with pytest.raises(anthropic.APIStatusError):
        with claude(stack, account).messages.stream(model="claude-sonnet-4-6", max_tokens=50,
                                                     messages=[{"role": "user", "content": f"card {CARD}"}]) as s:
            "".join(s.text_stream)
    rows = logged(stack, account, 2)
    assert all(r["guardrails"] == {"response": {"pii.card": "block"}} for r in rows)
    assert all(r["error"] == "Response blocked due to security configurations" for r in rows)
    assert all(r["cost_usd"] is not None for r in rows)  # billed


# -- settings and logs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "field"), [
    ({"prompt": {"pii.nope": "flag"}}, "guardrails.prompt.pii.nope"),
    ({"prompt": {"pii.email": "drop"}}, "guardrails.prompt.pii.email"),
    ({"answers": {}}, "guardrails.answers"),
    ("redact", "guardrails"),
    ({"response": ["pii.*"]}, "guardrails.response"),
])
def test_a_wrong_setting_is_a_422_naming_the_field(stack: Stack, value: Any, field: str) -> None:
    account = stack.guarded(None)
    with stack.admin() as admin:
        answer = admin.patch(f"/accounts/{account}/gateways/g", json={"guardrails": value})
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == field


def test_setting_read_back_and_logs_filtered_by_category(stack: Stack) -> None:
    account = stack.guarded(None)
    with stack.admin() as admin:
        patched = admin.patch(f"/accounts/{account}/gateways/g",
                              json={"guardrails": {"prompt": {"secret.*": "flag"}, "response": {}}})
        assert patched.json()["result"]["guardrails"] == {"prompt": {"secret.*": "flag"}}
    oai(stack, account).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": AWS}])
    oai(stack, account).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    logged(stack, account, 2)
    rows = stack.logs(account, guardrail="secret.aws")
    assert len(rows) == 1 and rows[0]["guardrails"] == {"prompt": {"secret.aws": "flag"}}
    assert stack.logs(account, guardrail="pii.email") == []
    with stack.admin() as admin:
        wrong = admin.get(f"/accounts/{account}/gateways/g/logs", params={"guardrail": "pii"})
    assert wrong.status_code == 422 and wrong.json()["error"]["field"] == "guardrail"


def test_body_that_is_not_json_cannot_be_redacted_so_it_is_refused(stack: Stack) -> None:
    account = stack.guarded({"prompt": REDACT_PII})
    before = len(stack.recorder("openai").requests)
    answer = httpx.post(stack.base(account) + "/openai/audio/transcriptions", content=f"to {EMAIL}".encode(),
                        headers={"content-type": "text/plain", "authorization": "Bearer sk-client"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == 2016
    assert len(stack.recorder("openai").requests) == before


def test_on_unified_billing_a_blocked_prompt_costs_nothing_and_a_blocked_answer_is_billed(stack: Stack) -> None:
    account = stack.guarded({"prompt": {"secret.*": "block"}, "response": {"pii.card": "block"}})
    with stack.admin() as admin:
        admin.post(f"/accounts/{account}/credits/topups", json={"amount_usd": "1.00", "idempotency_key": "seed"})
    url = stack.base(account) + "/openai/chat/completions"  # no key: the gateway's own, paid from credits
    before = len(stack.recorder("openai").requests)
    blocked = httpx.post(url, json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": AWS}]})
    assert blocked.status_code == 400 and blocked.json()["error"]["code"] == 2016
    assert len(stack.recorder("openai").requests) == before
    with stack.admin() as admin:
        credits = admin.get(f"/accounts/{account}/credits").json()["result"]
    assert credits["balance_usd"] == "1.00" and Decimal(credits["pending_usd"]) == 0  # nothing reserved
    refused = httpx.post(url, json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"say {CARD}"}]})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == 2017
    cost = Decimal(refused.headers["cf-aig-cost"])
    assert cost > 0
    with stack.admin() as admin:
        credits = eventually_sync(lambda: admin.get(f"/accounts/{account}/credits").json()["result"],
                                  until=lambda c: Decimal(c["pending_usd"]) == 0, what="the settlement")
    assert Decimal(credits["balance_usd"]) == Decimal("1.00") - cost  # the provider answered: billed
