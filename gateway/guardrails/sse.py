"""A streamed answer redacted event by event, for every provider's event format.

A model's text arrives as deltas: a match can start in one event and end several events later. Each text channel
(a choice's content, a tool call's arguments, an Anthropic content block, a Responses output part, a Gemini
candidate) has its own Redactor (gateway/guardrails/scanner.py) fed with the channel's deltas in order; each delta
event carries what the redactor released at that point (often all of it; the last word when it could still grow
into a match). What is held is released when the channel closes (a finish reason, a content block's stop, a
`.done` event, the end of the stream): into the closing event when it has a text slot of that channel (Gemini),
else as one more delta event made from the channel's last one, sent just before the closing event.

Strings outside the deltas (a Responses `.done` event's whole text, tool call inputs that come whole, the final
`response.completed` object) are redacted whole (gateway/guardrails/payload.py); whole text and stream redact
alike, so the two agree. An event whose text did not change is sent as it came, byte for byte.

With `stop_on` categories (block), the stream ends at the match: what came before it was released, the match and
everything after it are not, and an error event (code 2017, the categories) in the stream's own format ends it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.guardrails.payload import redact_json
from gateway.guardrails.scanner import Redactor, Rules

BLOCKED_RESPONSE = "Response blocked due to security configurations"
RESPONSE_BLOCKED_CODE = 2017
_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\n|\r")
_CHAT_FIELDS = ("content", "refusal", "reasoning_content", "reasoning")
_ANTHROPIC_FIELDS = {"text_delta": "text", "input_json_delta": "partial_json", "thinking_delta": "thinking"}
_RESPONSES_DELTAS = ("response.output_text.delta", "response.function_call_arguments.delta",
                     "response.refusal.delta", "response.reasoning_summary_text.delta", "response.reasoning_text.delta")

Key = tuple[Any, ...]


@dataclass
class _Slot:
    """One delta in one event: where its text is, and how to make a delta event of the channel with other text."""

    key: Key
    container: dict[str, Any]
    field: str
    make: Callable[[str], dict[str, Any]]


@dataclass
class _Event:
    raw: bytes
    name: str | None
    data: Any  # the parsed JSON, or None
    slots: list[_Slot] = field(default_factory=list)
    closes: Callable[[Key], bool] = lambda key: False


@dataclass
class _Channel:
    redactor: Redactor
    event_name: str | None
    make: Callable[[str], dict[str, Any]]


class StreamRedactor:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.pending = b""
        self.channels: dict[Key, _Channel] = {}
        self.found: set[str] = set()  # the categories seen (the log names them, never the text)
        self.stopped: str | None = None
        self.flavour: str | None = None  # "anthropic" when its event names are seen (the error event's format)

    def feed(self, data: bytes) -> bytes:
        """What to send now for these bytes of the stream."""
        if self.stopped is not None:
            return b""
        self.pending += data
        out = bytearray()
        while self.stopped is None:
            match = _BOUNDARY.search(self.pending)
            if match is None:
                break
            raw, self.pending = self.pending[:match.end()], self.pending[match.end():]
            out += self._event(raw)
        return bytes(out)

    def finish(self) -> bytes:
        """What to send after the stream's last byte: the held text of every channel, and any unterminated tail."""
        if self.stopped is not None:
            return b""
        out = bytearray(self._flush(lambda key: True))
        if self.stopped is None:
            out += self.pending
        self.pending = b""
        return bytes(out)

    # -- one event ---------------------------------------------------------------------------------------------

    def _event(self, raw: bytes) -> bytes:
        event = _parse(raw)
        if event.name in ("message_start", "content_block_delta", "content_block_start", "ping"):
            self.flavour = "anthropic"
        if not isinstance(event.data, dict):
            return self._flush(lambda key: True) + (b"" if self.stopped else raw)
        _find_slots(event)
        changed = False
        for slot in event.slots:
            channel = self.channels.get(slot.key)
            if channel is None:
                channel = self.channels[slot.key] = _Channel(Redactor(self.rules), event.name, slot.make)
            channel.make, channel.event_name = slot.make, event.name
            text = slot.container[slot.field]
            released = channel.redactor.feed(text)
            self._count(channel.redactor)
            if released != text:
                slot.container[slot.field] = released
                changed = True
            if channel.redactor.stopped is not None:  # only this channel's released text, then the end
                self.stopped = channel.redactor.stopped
                last = _encode_data(event.name, slot.make(released)) if released else b""
                return last + self.error_event()
        before = bytearray()
        closing = [key for key in self.channels if event.closes(key)]
        for key in closing:
            channel = self.channels.pop(key)
            rest = channel.redactor.finish()
            self._count(channel.redactor)
            own = [s for s in event.slots if s.key == key]
            if rest and own:
                own[-1].container[own[-1].field] += rest
                changed = True
            elif rest:
                before += _encode_data(channel.event_name, channel.make(rest))
            if channel.redactor.stopped is not None:
                self.stopped = channel.redactor.stopped
                return bytes(before) + self.error_event()
        skip = {(id(s.container), s.field) for s in event.slots}
        found: dict[str, int] = {}
        data = redact_json(event.data, self.rules, found, skip)
        if found:
            self.found.update(found)
            blocked = sorted(c for c in found if c in self.rules.stop_on)
            if blocked:
                self.stopped = blocked[0]
                return bytes(before) + self.error_event()
            if data is not event.data:
                event.data = data
                changed = True
        return bytes(before) + (_encode(event) if changed else raw)

    def _flush(self, which: Callable[[Key], bool]) -> bytes:
        out = bytearray()
        for key in [k for k in self.channels if which(k)]:
            channel = self.channels.pop(key)
            rest = channel.redactor.finish()
            self._count(channel.redactor)
            if rest:
                out += _encode_data(channel.event_name, channel.make(rest))
            if channel.redactor.stopped is not None:
                self.stopped = channel.redactor.stopped
                return bytes(out) + self.error_event()
        return bytes(out)

    def _count(self, redactor: Redactor) -> None:
        self.found.update(redactor.found)

    def error_event(self) -> bytes:
        categories = sorted(c for c in self.found if c in self.rules.stop_on)
        error = {"code": RESPONSE_BLOCKED_CODE, "message": BLOCKED_RESPONSE, "categories": categories}
        if self.flavour == "anthropic":
            payload = {"type": "error", "error": {"type": "guardrail_blocked", **error}}
            return _encode_data("error", payload)
        return _encode_data(None, {"error": error})


# -- parsing and writing events --------------------------------------------------------------------------------


def _parse(raw: bytes) -> _Event:
    name: str | None = None
    data_lines: list[bytes] = []
    for line in _LINE.split(raw):
        if line.startswith(b"event:"):
            name = line[6:].strip().decode("utf-8", "replace")
        elif line.startswith(b"data:"):
            value = line[5:]
            data_lines.append(value[1:] if value.startswith(b" ") else value)
    data: Any = None
    if data_lines:
        try:
            data = json.loads(b"\n".join(data_lines))
        except ValueError:
            data = None
    return _Event(raw, name, data)


def _encode(event: _Event) -> bytes:
    return _encode_data(event.name, event.data)


def _encode_data(name: str | None, data: Any) -> bytes:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + body + b"\n\n"


# -- where the deltas are, per format ------------------------------------------------------------------------


def _find_slots(event: _Event) -> None:
    data = event.data
    kind = data.get("type")
    if isinstance(data.get("choices"), list):
        _chat(event, data)
    elif kind == "content_block_delta":
        _anthropic(event, data)
    elif isinstance(kind, str) and kind.startswith("response."):
        _responses(event, data, kind)
    elif isinstance(data.get("candidates"), list):
        _gemini(event, data)
    elif kind in ("content_block_stop",):
        index = data.get("index")
        event.closes = lambda key: key[0] == "anthropic" and key[1] == index
    elif kind in ("message_delta", "message_stop"):
        event.closes = lambda key: True


def _chat(event: _Event, data: dict[str, Any]) -> None:
    top = {k: v for k, v in data.items() if k not in ("choices", "usage", "x_groq")}
    finished: set[Any] = set()
    for choice in data["choices"]:
        if not isinstance(choice, dict):
            continue
        index = choice.get("index", 0)
        if choice.get("finish_reason") is not None:
            finished.add(index)
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        for name in _CHAT_FIELDS:
            if isinstance(delta.get(name), str):
                event.slots.append(_Slot(("chat", index, name), delta, name, _chat_maker(top, index, {name: None})))
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                at = call.get("index", 0)
                shape = {"tool_calls": [{"index": at, "function": {"arguments": None}}]}
                event.slots.append(_Slot(("chat", index, "tool", at), function, "arguments",
                                         _chat_maker(top, index, shape)))
    event.closes = lambda key: key[0] == "chat" and key[1] in finished


def _chat_maker(top: dict[str, Any], index: Any, shape: dict[str, Any]) -> Callable[[str], dict[str, Any]]:
    def make(text: str) -> dict[str, Any]:
        return {**top, "choices": [{"index": index, "delta": _fill(shape, text), "finish_reason": None}]}
    return make


def _fill(shape: Any, text: str) -> Any:
    if shape is None:
        return text
    if isinstance(shape, dict):
        return {k: _fill(v, text) for k, v in shape.items()}
    if isinstance(shape, list):
        return [_fill(v, text) for v in shape]
    return shape


def _anthropic(event: _Event, data: dict[str, Any]) -> None:
    delta = data.get("delta")
    if not isinstance(delta, dict):
        return
    name = _ANTHROPIC_FIELDS.get(str(delta.get("type")))
    if name is None or not isinstance(delta.get(name), str):
        return
    index, kind = data.get("index"), delta.get("type")

    def make(text: str) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": index, "delta": {"type": kind, name: text}}

    event.slots.append(_Slot(("anthropic", index, name), delta, name, make))


def _responses(event: _Event, data: dict[str, Any], kind: str) -> None:
    where = (data.get("item_id"), data.get("output_index"), data.get("content_index"))
    if kind in _RESPONSES_DELTAS and isinstance(data.get("delta"), str):
        template = {k: v for k, v in data.items() if k != "delta"}
        if "logprobs" in template:
            template["logprobs"] = []

        def make(text: str) -> dict[str, Any]:
            return {**template, "delta": text}

        event.slots.append(_Slot(("responses", kind, *where), data, "delta", make))
        return
    if kind in ("response.completed", "response.incomplete", "response.failed"):
        event.closes = lambda key: True
    elif kind.endswith(".done"):
        output = data.get("output_index")
        event.closes = lambda key: key[0] == "responses" and key[3] == output


def _gemini(event: _Event, data: dict[str, Any]) -> None:
    top = {k: v for k, v in data.items() if k in ("modelVersion", "responseId")}
    finished: set[Any] = set()
    for position, candidate in enumerate(data["candidates"]):
        if not isinstance(candidate, dict):
            continue
        index = candidate.get("index", position)
        if candidate.get("finishReason"):
            finished.add(index)
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                thought = bool(part.get("thought"))
                event.slots.append(_Slot(("gemini", index, thought), part, "text",
                                         _gemini_maker(top, index, thought)))
    event.closes = lambda key: key[0] == "gemini" and key[1] in finished


def _gemini_maker(top: dict[str, Any], index: Any, thought: bool) -> Callable[[str], dict[str, Any]]:
    def make(text: str) -> dict[str, Any]:
        part: dict[str, Any] = {"text": text, **({"thought": True} if thought else {})}
        return {"candidates": [{"content": {"role": "model", "parts": [part]}, "index": index}], **top}
    return make
