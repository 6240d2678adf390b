"""The one shared upstream client, and how the router sends a call with it.

`UpstreamClient` (built by the router's `make_client`) is an `httpx.AsyncClient` over the aiohttp transport
(`httpx-aiohttp`), which the gateway's other outgoing calls use through httpx's API (JWKS, alert webhooks). The
router's calls to providers, one per request, skip httpx's client layer: `prepare` hands them straight to the
transport's aiohttp session with what the transport would have been given (httpx's default headers under the
call's own, the client's timeouts, no redirects, no decompression) and wraps the answer in the
same `httpx.Response` with the same exception mapping, so everything downstream reads one type. What that skips
per call: building an `httpx.Request` (URL parsing, header models), httpx's cookie jar, the auth and redirect
machinery: about half the client's CPU per call (bench/proxy.py `--clients`, bench/README.md).

No cookies, either way: one shared client serves every tenant, so a cookie a provider set on one tenant's call
must never go with another's. The aiohttp session has a jar that keeps nothing, and httpx's jar refuses every
cookie.

A call the direct path cannot send exactly as httpx would goes through `client.send` as before: a client that is
not an `UpstreamClient` (a test's `httpx.MockTransport`), proxies from the environment (httpx mounts transports of
its own for them), a header that is not ASCII (httpx refuses it), or a base URL httpx would rewrite.
"""

from __future__ import annotations

import functools
import http.cookiejar
import urllib.request
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

TIMEOUT = httpx.Timeout(30.0, read=600.0, pool=30.0)
_EXTENSIONS_HTTP11 = {"http_version": b"HTTP/1.1"}


class _CookielessTransport(AiohttpTransport):
    """httpx-aiohttp's transport, its session built without a cookie jar (aiohttp's keeps every cookie of a named
    host and sends it back on every later call there)."""

    def get_client(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(keepalive_timeout=self.limits.keepalive_expiry, ssl=self.ssl_context,
                                         limit=self.limits.max_connections or 0)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())


class UpstreamClient(httpx.AsyncClient):
    """httpx's API over an aiohttp session, which the router also uses directly (`prepare`). Keeps no cookies."""

    def __init__(self, max_connections: int = 1000) -> None:
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.transport = _CookielessTransport(limits=limits)
        super().__init__(transport=self.transport, timeout=TIMEOUT,
                         cookies=http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[])))
        # what the transport would turn the client's timeout into (httpx_aiohttp: connect <- pool)
        self.aiohttp_timeout = aiohttp.ClientTimeout(sock_connect=TIMEOUT.connect, sock_read=TIMEOUT.read,
                                                     connect=TIMEOUT.pool)
        # httpx sends its default headers under the call's own (names lower-cased: the call's are)
        self.default_headers = {name.lower(): value for name, value in self.headers.items()}
        # httpx routes through proxies from the environment with transports of its own: then httpx sends it all
        self.direct = not urllib.request.getproxies()

    def session(self) -> aiohttp.ClientSession:
        """The transport's session (created on first use, in the running loop, as the transport does)."""
        client = self.transport.client
        if not isinstance(client, aiohttp.ClientSession):
            client = self.transport.client = self.transport.get_client()
        return client


@functools.lru_cache(maxsize=1024)
def _base_kept(base: str) -> bool:
    """httpx leaves a URL on this base as it is (the router's paths and queries hold only characters it keeps), so
    aiohttp gets the same string either way."""
    sample = f"{base}/v1/x"
    try:
        return str(httpx.URL(sample)) == sample
    except httpx.InvalidURL:
        return False


def _ascii(headers: dict[str, str]) -> bool:
    return all(name.isascii() and value.isascii() for name, value in headers.items())


def prepare(client: httpx.AsyncClient, method: str, base: str, url: str, headers: dict[str, str],
            content: bytes) -> Callable[[], Awaitable[httpx.Response]]:
    """The call, ready to be sent (once per attempt): each attempt returns the response with its body not read yet
    (`aiter_raw`, then `aclose`), or raises httpx's errors (`httpx.HTTPError`), whichever way it went. Raises here
    what httpx refuses to build (a header that is not ASCII), before anything is sent."""
    if not (isinstance(client, UpstreamClient) and client.direct and _base_kept(base) and _ascii(headers)):
        request = client.build_request(method, url, headers=headers, content=content)
        return functools.partial(client.send, request, stream=True)
    merged = {**client.default_headers, **headers}  # Content-Length: aiohttp sets it where httpx would
    session, timeout, data = client.session(), client.aiohttp_timeout, content or None

    async def attempt() -> httpx.Response:
        with map_aiohttp_exceptions():
            response = await session.request(method, url, headers=merged, data=data, allow_redirects=False,
                                             auto_decompress=False, compress=False, timeout=timeout)
        extensions = dict(_EXTENSIONS_HTTP11)
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(response.status, headers=response.raw_headers,
                              stream=AiohttpResponseStream(response), extensions=extensions)

    return attempt
