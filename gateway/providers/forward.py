"""Sending one request upstream with retries, and the headers that may cross.

Retries (`cf-aig-max-attempts`, `-retry-delay`, `-backoff`) cover connection errors, no first byte within
`cf-aig-request-timeout`, and 429/5xx answers; nothing is retried once a response was chosen for the client
(the router only starts sending after `send_with_retries` returns). When every attempt failed: unreachable →
`UpstreamUnreachable`, timeout → `UpstreamTimeout` (gateway/errors.py: 502, 504); a final 429/5xx answer is
returned as is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import httpx

from gateway.errors import UpstreamFailure, UpstreamTimeout, UpstreamUnreachable
from gateway.providers.options import RequestOptions

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding",
}
KEY_HEADERS = {"authorization", "x-api-key", "x-goog-api-key"}
# headers that move a call to another provider account, project or billing scope: never with the gateway's keys
ACCOUNT_HEADERS = {"openai-organization", "openai-project", "x-goog-user-project", "anthropic-organization"}
RETRYABLE_STATUS = {429, 500, 502, 503, 504}
DEFAULT_FIRST_BYTE_TIMEOUT_S = 300.0


def upstream_headers(headers: Iterable[tuple[bytes, bytes]], auth: dict[str, str] | None,
                     gateway_key: bool = False) -> dict[str, str]:
    """Client headers minus hop-by-hop (those the client named in its Connection header and any proxy-* too),
    cf-aig-*, cf-access-*, forwarding headers, cookies, Content-Encoding (the body goes decoded), the key headers
    when we set the key, and the account-moving headers when the key is the gateway's."""
    named_headers = [(raw_name.decode("latin-1").lower(), raw_value) for raw_name, raw_value in headers]
    named = {token.strip() for name, value in named_headers if name == "connection"
             for token in value.decode("latin-1").lower().split(",")}
    out: dict[str, str] = {}
    for name, raw_value in named_headers:
        if name in HOP_BY_HOP or name in named or name.startswith(
                ("cf-aig-", "cf-access-", "x-forwarded-", "proxy-")) or name in ("cookie", "content-encoding",
                                                                                "forwarded", "x-real-ip"):
            continue
        if auth is not None and name in KEY_HEADERS:
            continue
        if gateway_key and name in ACCOUNT_HEADERS:
            continue
        out[name] = raw_value.decode("latin-1")
    out["accept-encoding"] = "identity"  # usage is read from the body as it passes
    if auth:
        out.update(auth)
    return out


# Never relayed from an upstream answer: the hop-by-hop headers (RFC 9110 7.6.1; uvicorn frames the body itself),
# Content-Encoding (the body goes decoded) and Content-Length (set again where the body is known), and the
# upstream's Server and Date: the server that answers the client adds its own, and a second copy of either would
# make the answer carry two.
NOT_RELAYED = HOP_BY_HOP | {"content-encoding", "server", "date"}


def response_headers(response: httpx.Response) -> list[tuple[bytes, bytes]]:
    raw = [(name.lower(), value) for name, value in response.headers.raw]
    # a header the upstream named in its Connection header is hop-by-hop too
    named = {token.strip().lower() for name, value in raw if name == b"connection" for token in value.split(b",")}
    # `cf-aig-*` answers are the gateway's own (cost, log id, cache status, provider): an upstream's (another AI
    # gateway behind a custom provider) would stand beside or instead of them, so none is relayed
    return [(name, value) for name, value in raw
            if name.decode("latin-1") not in NOT_RELAYED and not name.startswith((b"proxy-", b"cf-aig-"))
            and name not in named]


async def send_with_retries(
    attempt_once: Callable[[], Awaitable[httpx.Response]], options: RequestOptions, provider: str,
) -> tuple[httpx.Response, int]:
    """(response with its body unread, attempts before it that reached the provider and timed out: each had the
    prompt, and is billed its input). `attempt_once` sends the call once (gateway/providers/upstream.py `send`)."""
    timeout = options.timeout_ms / 1000 if options.timeout_ms else DEFAULT_FIRST_BYTE_TIMEOUT_S
    failure: UpstreamFailure | None = None
    sent = 0
    for attempt in range(1, options.max_attempts + 1):
        try:
            async with asyncio.timeout(timeout):
                response = await attempt_once()
        except TimeoutError:
            failure = UpstreamTimeout(provider, f"{provider} did not answer within {timeout * 1000:.0f} ms")
            sent += 1
        except httpx.TimeoutException as exc:
            if _refused(exc):  # httpx-aiohttp maps a refused connection to ConnectTimeout
                failure = UpstreamUnreachable(provider, f"{provider} is unreachable: connection refused")
            else:
                failure = UpstreamTimeout(provider, f"{provider} timed out")
                sent += not isinstance(exc, httpx.ConnectTimeout)
        except httpx.TransportError as exc:
            failure = UpstreamUnreachable(provider, f"{provider} is unreachable: {type(exc).__name__}")
            sent += not isinstance(exc, httpx.ConnectError)
        else:
            if response.status_code not in RETRYABLE_STATUS or attempt == options.max_attempts:
                return response, sent
            await response.aclose()
            failure = None
        if attempt < options.max_attempts:
            await asyncio.sleep(options.delay_s(attempt))
    assert failure is not None
    failure.sent = sent
    raise failure


def _refused(exc: BaseException) -> bool:
    import aiohttp

    cause = exc.__cause__
    return isinstance(cause, aiohttp.ClientConnectorError) and not isinstance(cause, TimeoutError)
