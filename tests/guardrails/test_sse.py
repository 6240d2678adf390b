"""The stream redactor on each provider's event format, without a network: the bytes of a stream cut anywhere give
the text a whole answer would have, events whose text did not change pass byte for byte, and held text is released
when its channel closes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.guardrails.categories import CATEGORIES
from gateway.guardrails.scanner import Rules, redact
from gateway.guardrails.sse import StreamRedactor

RULES = Rules.of(set(CATEGORIES), set(CATEGORIES))
BLOCK_CARD = Rules.of(set(CATEGORIES), set(CATEGORIES), {"pii.card"})
REPLY = ["Sure: mail ", "jane.d", "oe@exam", "ple.com or call +1 41", "5 555 01", "32. Card 4539 1488 ", "0343 6467",
         "."]


def sse(name: str | None, data: Any) -> bytes:
    return (f"event: {name}\n" if name else "").encode() + b"data: " + json.dumps(data).encode() + b"\n\n"


def chat(pieces: list[str]) -> bytes:
    base = {"id": "c1", "object": "chat.completion.chunk", "model": "m"}
    events = [sse(None, {**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
              for p in pieces]
    events.append(sse(None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    return b"".join(events) + b"data: [DONE]\n\n"


def anthropic(pieces: list[str]) -> bytes:
    events = [sse("message_start", {"type": "message_start", "message": {"id": "m1", "content": []}}),
              sse("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}})]
    events += [sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                           "delta": {"type": "text_delta", "text": p}}) for p in pieces]
    events += [sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
               sse("message_stop", {"type": "message_stop"})]
    return b"".join(events)


def gemini(pieces: list[str]) -> bytes:
    def chunk(text: str, last: bool) -> bytes:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        return b"data: " + json.dumps({"candidates": [candidate]}).encode() + b"\r\n\r\n"
    return b"".join(chunk(p, i == len(pieces) - 1) for i, p in enumerate(pieces))


def responses(pieces: list[str]) -> bytes:
    where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events = [sse("response.output_text.delta", {"type": "response.output_text.delta", **where, "delta": p})
              for p in pieces]
    events.append(sse("response.output_text.done", {"type": "response.output_text.done", **where,
                                                     "text": "".join(pieces)}))
    return b"".join(events)


def texts_of(stream: bytes) -> tuple[str, list[dict[str, Any]]]:
    """The text the client reads from a stream (every delta, in order), and the events' data."""
    out, events = [], []
    for block in stream.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")]
        if not data or data[0] == b"[DONE]":
            continue
        event = json.loads(data[0])
        events.append(event)
        if "choices" in event:
            out += [c["delta"].get("content") or "" for c in event["choices"]]
        elif event.get("type") == "content_block_delta":
            out.append(event["delta"]["text"])
        elif "candidates" in event:
            out += [p["text"] for c in event["candidates"] for p in c["content"]["parts"]]
        elif event.get("type") == "response.output_text.delta":
            out.append(event["delta"])
    return "".join(out), events


FORMATS: dict[str, Callable[[list[str]], bytes]] = {"chat": chat, "anthropic": anthropic, "gemini": gemini,
                                                    "responses": responses}


def run(stream: bytes, cuts: list[int], rules: Rules = RULES) -> tuple[bytes, StreamRedactor]:
    redactor = StreamRedactor(rules)
    out, at, i = bytearray(), 0, 0
    while at < len(stream):
        size = cuts[i % len(cuts)]
        out += redactor.feed(stream[at:at + size])
        at, i = at + size, i + 1
    out += redactor.finish()
    return bytes(out), redactor


@settings(max_examples=60, deadline=None)
@given(kind=st.sampled_from(sorted(FORMATS)), cuts=st.lists(st.integers(1, 120), min_size=1, max_size=20))
def test_every_format_cut_anywhere_reads_as_the_whole_answer_redacted(kind: str, cuts: list[int]) -> None:
    out, redactor = run(FORMATS[kind](REPLY), cuts)
    text, events = texts_of(out)
    assert text == redact("".join(REPLY), RULES)[0]
    assert text == ("Sure: mail [REDACTED:pii.email] or call [REDACTED:pii.phone]. Card [REDACTED:pii.card].")
    assert redactor.found == {"pii.email", "pii.phone", "pii.card"}
    if kind == "responses":  # the .done event's whole text is redacted alike
        assert events[-1]["text"] == text


def test_events_without_findings_pass_byte_for_byte() -> None:
    for make in FORMATS.values():
        stream = make(["Hello ", "there, ", "nothing ", "to see!"])  # each piece ends where no match can grow
        assert run(stream, [7])[0] == stream


def test_held_text_is_released_before_the_event_that_closes_its_channel() -> None:
    out, _ = run(chat(["call +1 415 555"]), [10_000])
    text, events = texts_of(out)
    assert text == "call +1 415 555"  # not a valid number once complete: released unchanged
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    released, held = events[-3]["choices"][0], events[-2]["choices"][0]
    assert released["delta"]["content"] == "call "  # the rest could have become a phone number
    assert held == {"index": 0, "delta": {"content": "+1 415 555"}, "finish_reason": None}


def test_a_blocked_stream_ends_with_an_error_event_in_its_format() -> None:
    out, redactor = run(chat(REPLY), [33], BLOCK_CARD)
    text, events = texts_of(out)
    assert text == "Sure: mail [REDACTED:pii.email] or call [REDACTED:pii.phone]. Card "
    assert events[-1] == {"error": {"code": 2017, "message": "Response blocked due to security configurations",
                                    "categories": ["pii.card"]}}
    assert redactor.stopped == "pii.card"
    out, _ = run(anthropic(REPLY), [50], BLOCK_CARD)
    assert out.rstrip().split(b"\n")[-2] == b"event: error"
    assert b"4539" not in out and b"0343" not in out
