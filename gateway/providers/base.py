"""What every wire format adapter provides to the router.

An adapter knows: where a path goes upstream, which header carries the provider key (to detect a client's own
key and to set the gateway's), the model of a request, and how to read usage from a JSON body and from an SSE
stream. The router does the HTTP; adapters are pure and tested with `httpx.MockTransport`-free unit tests.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.exchange import Usage
from gateway.providers.sse import Event


class StreamUsage(Protocol):
    """Reads usage from a stream's events as they pass. `swallow` says the client must not see this event."""

    usage: Usage
    model: str | None
    final: bool  # the provider sent its final usage (else the router estimates what it did not see)

    def on_event(self, event: Event) -> bool: ...


class Adapter(Protocol):
    name: str
    key_header: str  # the request header that carries the provider key

    def upstream_url(self, base: str, path: str, query: str) -> str: ...
    def client_key(self, headers: dict[str, str], query: str) -> str | None: ...
    def auth_headers(self, key: str) -> dict[str, str]: ...
    def prepare(self, path: str, body: Any, stream: bool) -> tuple[Any, bool]:
        """(body to send, whether the gateway added a stream usage request the client did not ask for)."""
        ...
    def usage_from_json(self, path: str, body: Any) -> Usage: ...
    def stream_usage(self, path: str, hide_usage_chunk: bool) -> StreamUsage: ...
    def error_body(self, status: int, message: str) -> dict[str, Any]: ...


def as_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
