"""What a request asks of the cache (its `cf-aig-*` cache headers) and the key its answer is stored under.

The key is the SHA-256 of the canonical call (gateway/providers/call.py, `Exchange.call`): the provider, whether
it came through the compat endpoint (the answer's shape differs), the method, the normalised provider path (the
endpoint, and on Gemini the model), the re-encoded query, the model, stream or not, and the parsed JSON body with
its keys sorted. Two requests that differ only in formatting (whitespace, key order, escapes, a gzip'd body) are
the same call and share an entry. Beside the call, the key holds the request headers that change what a provider
answers to the same body (`anthropic-version`, `anthropic-beta`, `openai-beta`), and the scope parts: the caller's
identity when the gateway scopes its cache by identity, and a hash of the client's own provider key when it sent
one (an answer paid with one key is never served to a request with another).

`cf-aig-cache-key: k` replaces the computed call: requests with the same `k` (and the same scope) share an entry,
whatever they ask. Stream or not stays part of the key: an SSE client cannot read a JSON answer, nor the reverse.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.errors import HeaderError
from gateway.exchange import Call

MAX_TTL_S = 30 * 24 * 3600  # a month, as Cloudflare's longest cache TTL
MAX_CUSTOM_KEY = 1024
ANSWER_HEADERS = ("anthropic-version", "anthropic-beta", "openai-beta")
KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")
VERSION = "spendgate-cache-1"  # changes when the key's material does, so old entries are never read


@dataclass(frozen=True)
class CacheOptions:
    """`cf-aig-cache-ttl` (seconds; 0: not cached), `cf-aig-skip-cache`, `cf-aig-cache-key`."""

    ttl_s: int | None = None
    skip: bool = False
    key: str | None = None


NO_OPTIONS = CacheOptions()


def has_cache_headers(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name.lower().startswith((b"cf-aig-cache-", b"cf-aig-skip-cache")) for name, _ in headers)


def cache_options(headers: list[tuple[bytes, bytes]]) -> CacheOptions:
    """The cache headers, validated (HeaderError names the header: 400, nothing forwarded)."""
    values: dict[str, str] = {}
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1").lower()
        if name in ("cf-aig-cache-ttl", "cf-aig-skip-cache", "cf-aig-cache-key"):
            if name in values:
                raise HeaderError(name, f"the {name} header was sent more than once")
            values[name] = raw_value.decode("latin-1")
    ttl = None
    if "cf-aig-cache-ttl" in values:
        try:
            ttl = int(values["cf-aig-cache-ttl"].strip())
        except ValueError:
            raise HeaderError("cf-aig-cache-ttl", "cf-aig-cache-ttl must be an integer (seconds)") from None
        if not 0 <= ttl <= MAX_TTL_S:
            raise HeaderError("cf-aig-cache-ttl", f"cf-aig-cache-ttl must be between 0 and {MAX_TTL_S} seconds")
    skip = False
    if "cf-aig-skip-cache" in values:
        text = values["cf-aig-skip-cache"].strip().lower()
        if text not in ("true", "false"):
            raise HeaderError("cf-aig-skip-cache", "cf-aig-skip-cache must be true or false")
        skip = text == "true"
    key = values.get("cf-aig-cache-key")
    if key is not None:
        if not 1 <= len(key) <= MAX_CUSTOM_KEY or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
            raise HeaderError("cf-aig-cache-key",
                              f"cf-aig-cache-key must be 1-{MAX_CUSTOM_KEY} characters, without control characters")
    return CacheOptions(ttl, skip, key)


def scope_parts(headers: list[tuple[bytes, bytes]], *, identity: str | None, passthrough: bool,
                query: str = "") -> list[str]:
    """What narrows an entry's scope below its gateway: the caller's identity (cache_scope "identity") and the
    client's own provider key (hashed; it is never stored), wherever it came: a key header, or Gemini's `?key=`
    (which a custom cache key would otherwise leave out of the key)."""
    parts = []
    if identity is not None:
        parts.append(f"identity:{identity}")
    if passthrough:
        digest = hashlib.sha256()
        for raw_name, raw_value in headers:
            if raw_name.decode("latin-1").lower() in KEY_HEADERS:
                digest.update(raw_name.lower() + b"\x00" + raw_value + b"\x00")
        for value in parse_qs(query, keep_blank_values=True).get("key", ()):
            digest.update(b"?key\x00" + value.encode("utf-8", "surrogateescape") + b"\x00")
        parts.append(f"key:{digest.hexdigest()}")
    return parts


def cache_key(call: Call, headers: list[tuple[bytes, bytes]], scope: list[str], custom: str | None) -> bytes:
    """The entry's key: 32 bytes."""
    material: list[Any] = [VERSION, scope]
    if custom is not None:
        material += ["custom", custom, call.stream]
    else:
        shaping = sorted((name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in headers
                         if name.decode("latin-1").lower() in ANSWER_HEADERS)
        material += ["call", call.provider, call.compat, call.method, call.path, call.query, call.model,
                     call.stream, shaping, call.body]
    # the price the caller set (where the gateway allows it) is the stored answer's cost, which a hit's
    # `cache_hit_charge` is a fraction of: answers priced differently are different entries (keys without it are
    # unchanged)
    priced = [value.decode("latin-1") for name, value in headers if name.lower() == b"cf-aig-custom-cost"]
    if priced:
        material += ["custom-cost", priced]
    try:
        encoded = orjson.dumps(material, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer past 64 bits: orjson cannot encode it, the standard library can
        encoded = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(encoded).digest()
