"""What every wire format adapter provides to the router.

An adapter knows: where a path goes upstream, which header carries the provider key (to detect a client's own
key and to set the gateway's), the model of a request, and how to read usage from a JSON body and from an SSE
stream. The router does the HTTP; adapters are pure and tested with `httpx.MockTransport`-free unit tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from gateway.exchange import Usage
from gateway.providers.sse import Event

if TYPE_CHECKING:
    import httpx

    from gateway.errors import CompatUpstreamError
    from gateway.exchange import Call


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


class Translator(Protocol):
    """Between the client's API and the provider's, for one call: the body sent upstream and the answer in the
    shape the client asked for. The target carries it; the router relays every answer through it. Native routes
    take the provider's own API and get its answers as they come (`Native`); the compat endpoint speaks OpenAI
    Chat Completions whatever the provider (gateway/providers/compat.py). One per call: a translated stream's
    state (its ids, its tool calls, its usage so far) lives here."""

    # The answer is re-shaped: read whole (JSON answers and the provider's errors) or translated event by event.
    # Else it is relayed as it comes (streams, and JSON beyond what is held for the cost header, pass through).
    reshapes: bool

    def request(self, call: Call) -> tuple[Any, bool]:
        """(the body to send upstream, whether it asks for a stream usage chunk the client did not ask for)."""
        ...

    def streams(self, response: httpx.Response) -> bool:
        """Is this answer relayed as a stream of events?"""
        ...

    def error_body(self, status: int, message: str, param: str | None) -> dict[str, Any]:
        """The gateway's own error answer, in the client's API's shape."""
        ...

    def provider_error(self, provider: str, status: int, raw: bytes) -> bytes:
        """The provider's error answer (read whole), as the client is sent it (`reshapes` only)."""
        ...

    def answer(self, data: Any) -> Any:
        """The provider's JSON answer (read whole), as the client is sent it (`reshapes` only)."""
        ...

    def stream_headers(self, upstream: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The headers of a streamed answer, from the provider's."""
        ...

    def feed(self, event: Event) -> bytes:
        """One event of the provider's stream (one the client may see): what the client is sent for it."""
        ...

    def finish(self, pending: bytes) -> bytes:
        """What the client is sent after the provider's last event (`pending`: bytes after it, unterminated)."""
        ...

    def failed(self, error: CompatUpstreamError) -> bytes:
        """The last event of a stream the provider ended with an error (raised by `feed`)."""
        ...


class Native:
    """The provider's own API on both sides: the body as the adapter prepares it, answers relayed as they come,
    the gateway's errors in the provider's error shape."""

    reshapes = False

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def request(self, call: Call) -> tuple[Any, bool]:
        return self.adapter.prepare(call.path, call.body, call.stream)

    def streams(self, response: httpx.Response) -> bool:
        return "text/event-stream" in response.headers.get("content-type", "")

    def error_body(self, status: int, message: str, param: str | None) -> dict[str, Any]:
        payload = self.adapter.error_body(status, message)
        payload.setdefault("success", False)
        return payload

    def provider_error(self, provider: str, status: int, raw: bytes) -> bytes:
        return raw

    def answer(self, data: Any) -> Any:
        return data

    def stream_headers(self, upstream: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return upstream

    def feed(self, event: Event) -> bytes:
        return event.raw

    def finish(self, pending: bytes) -> bytes:
        return pending

    def failed(self, error: CompatUpstreamError) -> bytes:  # pragma: no cover - a native stream is not translated
        return b""
