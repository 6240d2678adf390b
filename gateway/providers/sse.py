"""An incremental Server-Sent Events parser: feed bytes as they arrive, get whole events back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Event:
    event: str
    data: str
    raw: bytes  # the event's bytes as received, separator included

    def json(self) -> Any:
        try:
            return json.loads(self.data)
        except ValueError:
            return None


class SSEParser:
    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += chunk
        events = []
        while True:
            cut, sep = _find_separator(self._buffer)
            if cut < 0:
                break
            raw = self._buffer[: cut + sep]
            block = self._buffer[:cut]
            self._buffer = self._buffer[cut + sep :]
            name, data = "message", []
            for line in block.replace(b"\r\n", b"\n").split(b"\n"):
                if line.startswith(b":") or not line:
                    continue
                field, _, value = line.partition(b":")
                value = value[1:] if value.startswith(b" ") else value
                if field == b"event":
                    name = value.decode("utf-8", "replace")
                elif field == b"data":
                    data.append(value.decode("utf-8", "replace"))
            if data or name != "message":
                events.append(Event(name, "\n".join(data), raw))
            else:
                events.append(Event("", "", raw))  # comment / keep-alive: passed through untouched
        return events

    @property
    def pending(self) -> bytes:
        return self._buffer


def _find_separator(buffer: bytes) -> tuple[int, int]:
    best, size = -1, 0
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = buffer.find(sep)
        if i >= 0 and (best < 0 or i < best):
            best, size = i, len(sep)
    return best, size
