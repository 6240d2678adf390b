"""The canonical call: one parser turns the raw request into `Exchange.call`, and every later layer reads only that.

Money leaks wherever two pieces of code read the same input differently (the gateway and the provider, the
estimate and the translation). So the request is read once, here, before any rule, policy, estimate, key or ZDR
decision, and the forwarder sends exactly what was understood: the upstream URL from the recognised endpoint,
the body re-encoded from the parsed JSON with the reserved output limit written in. What cannot be represented
faithfully is refused (docs/refusals.md):

- the body: read once (413 past the size limit, for every later reader too); a `Content-Encoding` of gzip,
  deflate, br or zstd decoded within the same limit, any other 415; JSON that is not valid, nests deeper than
  `MAX_DEPTH`, or contains NaN / Infinity / a number that overflows → 400;
- the endpoint: recognised per provider (method and path, `ENDPOINTS`); an unrecognised one is only served with
  the client's own key (the target refuses the gateway's keys for it, 403);
- the model: a string of printable ASCII without spaces (it ends up in a header and a URL); on Gemini it comes
  from the path and must look like a model name;
- the output limit: gateway/providers/output_limit.py;
- `stream` must be a boolean; query parameters are parsed and re-encoded (on the gateway's keys only the ones
  the endpoint understands pass, target.py).
"""

from __future__ import annotations

import asyncio
import gc
import re
import threading
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.types import Receive

from gateway.errors import BodyTooLarge, InvalidRequest, RequestRefused, UnsupportedEncoding
from gateway.exchange import Call, Endpoint, Exchange
from gateway.pricing import context_window
from gateway.providers import output_limit
from gateway.providers.estimate import measure_input
from gateway.providers.output_limit import LimitFields

MAX_DEPTH = 64
# the bound is measured once, when the body is parsed; a fallback or a dynamic route changes only the model (at
# most 256 characters) and a written limit: this much more covers both
MODEL_SLACK = 300
OFF_LOOP_BYTES = 256 * 1024  # bodies larger than this are parsed and encoded in a worker thread
_LARGE_PARSE = threading.Lock()
_MODEL = re.compile(r"[\x21-\x7e]{1,256}")
_GEMINI = re.compile(r"(v1beta|v1alpha|v1)/models/([A-Za-z0-9][A-Za-z0-9._-]{0,127}):"
                     r"(generateContent|streamGenerateContent|countTokens|embedContent|batchEmbedContents)")

CHAT = Endpoint("chat/completions", generates=True)
RESPONSES = Endpoint("responses", generates=True)
EMBEDDINGS = Endpoint("embeddings", generates=False)
MESSAGES = Endpoint("messages", generates=True)
COUNT_TOKENS = Endpoint("count_tokens", generates=False, free=True)
GEMINI_ENDPOINTS = {
    "generateContent": Endpoint("generateContent", generates=True),
    "streamGenerateContent": Endpoint("streamGenerateContent", generates=True),
    "countTokens": Endpoint("countTokens", generates=False, free=True),
    "embedContent": Endpoint("embedContent", generates=False),
    "batchEmbedContents": Endpoint("batchEmbedContents", generates=False),
}
_OPENAI_PATHS = {"chat/completions": CHAT, "responses": RESPONSES, "embeddings": EMBEDDINGS}
# grok's base URL has no /v1 (its SDK paths carry it); the other OpenAI-format bases end in /v1
ENDPOINTS: dict[str, dict[str, Endpoint]] = {
    "openai": _OPENAI_PATHS,
    "groq": _OPENAI_PATHS,
    "grok": {f"v1/{path}": endpoint for path, endpoint in _OPENAI_PATHS.items()},
    "anthropic": {"v1/messages": MESSAGES, "v1/messages/count_tokens": COUNT_TOKENS},
}
# query parameters the recognised endpoints understand (anything else is refused on the gateway's keys)
QUERY_PARAMETERS: dict[str, frozenset[str]] = {
    "google-ai-studio": frozenset({"alt"}),
    "anthropic": frozenset({"beta"}),
}


# -- the body -------------------------------------------------------------------------------------------------------


def _gunzip(data: bytes, limit: int, wbits: int) -> bytes:
    decoder = zlib.decompressobj(wbits)
    out = decoder.decompress(data, limit + 1)
    if len(out) > limit:
        raise BodyTooLarge(limit, decoded=True)
    if decoder.unconsumed_tail or not decoder.eof:
        raise InvalidRequest("the request body is not valid for its Content-Encoding", header="content-encoding")
    return out


def _brotli(data: bytes, limit: int) -> bytes:
    import brotli

    decoder = brotli.Decompressor()
    out = bytearray()
    step = 64 * 1024
    for start in range(0, len(data), step):
        out += decoder.process(data[start:start + step])
        if len(out) > limit:
            raise BodyTooLarge(limit, decoded=True)
    if not decoder.is_finished():
        raise InvalidRequest("the request body is not valid for its Content-Encoding", header="content-encoding")
    return bytes(out)


def _zstd(data: bytes, limit: int) -> bytes:
    import zstandard

    reader = zstandard.ZstdDecompressor().stream_reader(data)
    out = bytes(reader.read(limit + 1))
    if len(out) > limit:
        raise BodyTooLarge(limit, decoded=True)
    return out


def decode_body(data: bytes, encoding: str | None, limit: int) -> bytes:
    """The body with its Content-Encoding undone, never larger than `limit` (a small bomb stops at the limit)."""
    codings = [c.strip().lower() for c in (encoding or "").split(",") if c.strip()]
    if not codings or codings == ["identity"]:
        return data
    for coding in reversed(codings):  # applied in order, undone in reverse
        try:
            if coding in ("gzip", "x-gzip"):
                data = _gunzip(data, limit, 16 + zlib.MAX_WBITS)
            elif coding == "deflate":
                try:
                    data = _gunzip(data, limit, zlib.MAX_WBITS)
                except zlib.error:  # some clients send raw deflate without the zlib wrapper
                    data = _gunzip(data, limit, -zlib.MAX_WBITS)
            elif coding == "br":
                data = _brotli(data, limit)
            elif coding == "zstd":
                data = _zstd(data, limit)
            elif coding != "identity":
                raise UnsupportedEncoding(coding)
        except RequestRefused:
            raise
        except Exception:
            raise InvalidRequest("the request body is not valid for its Content-Encoding",
                                 header="content-encoding") from None
    return data


def load_json(data: bytes) -> tuple[Any, int, str | None]:
    """Strict JSON, its input bound and the input it loads by reference (gateway/providers/estimate.py), in one pass
    each: NaN, Infinity, numbers
    that overflow a double, invalid UTF-8 and lone surrogates are refused (orjson), and so is nesting past
    MAX_DEPTH. Integers past 64 bits are read as floats (a limit field then fails its integer check)."""
    if len(data) <= OFF_LOOP_BYTES:
        return _load_json(data)
    # A large body allocates a million objects: the collector would run over and over (a parsed body has no
    # cycles, so it finds nothing) while the parse holds the interpreter lock. One large parse at a time, with the
    # collector paused, keeps the event loop's waits short.
    with _LARGE_PARSE:
        paused = gc.isenabled()
        gc.disable()
        try:
            return _load_json(data)
        finally:
            if paused:
                gc.enable()


def _load_json(data: bytes) -> tuple[Any, int, str | None]:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {str(exc)[:160]}") from None
    # NestedTooDeep past MAX_DEPTH; off the event loop for a large body
    return value, *measure_input(value, MAX_DEPTH)


async def off_loop(size: int, work: Callable[[], Any]) -> Any:
    """Run `work` in a thread when the body is large, so one big body does not stall every other client."""
    if size > OFF_LOOP_BYTES:
        return await asyncio.to_thread(work)
    return work()


async def read_json(ex: Exchange, receive: Receive, encoding: str | None, limit: int) -> Any:
    """The request body, read once (413), decoded (415), parsed strictly. A body that is not JSON is kept as
    `ex.json_error`: only an endpoint the gateway understands needs JSON (parse_call refuses it there)."""
    if ex.decoded_body is None:
        raw = await ex.read_body(receive, limit)  # BodyTooLarge past the limit
        ex.decoded_body = await off_loop(len(raw), lambda: decode_body(raw, encoding, limit))
        decoded = ex.decoded_body
        if decoded:
            try:
                ex.json_body, ex.input_bound, ex.input_reference = await off_loop(len(decoded),
                                                                                  lambda: load_json(decoded))
            except RequestRefused as exc:
                ex.json_error = exc
    return ex.json_body


# -- the call -------------------------------------------------------------------------------------------------------


def recognise(provider: str, method: str, path: str) -> tuple[Endpoint | None, str | None]:
    """(the endpoint, the model named in the path) — (None, None) for what the gateway does not understand."""
    if method != "POST":
        return None, None
    if provider == "google-ai-studio":
        match = _GEMINI.fullmatch(path)
        return (GEMINI_ENDPOINTS[match.group(3)], match.group(2)) if match else (None, None)
    table = ENDPOINTS.get(provider) or (_OPENAI_PATHS if provider.startswith("custom-") else {})
    return table.get(path), None


def limit_fields(provider: str, endpoint: Endpoint, compat: bool = False) -> LimitFields | None:
    if not endpoint.generates:
        return None
    if endpoint is CHAT:
        return output_limit.CHAT if provider == "openai" or compat else output_limit.CHAT_OTHER
    if endpoint is RESPONSES:
        return output_limit.RESPONSES
    if endpoint is MESSAGES:
        return output_limit.MESSAGES
    return output_limit.GEMINI


def model_name(value: Any, field: str = "model") -> str:
    if not isinstance(value, str) or not _MODEL.fullmatch(value):
        raise InvalidRequest(f"{field} must be a model name (1-256 printable characters, no spaces)", param=field)
    return value


def canonical_query(query: str) -> str:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=32)
    except ValueError:
        raise InvalidRequest("the query string is not valid") from None
    for name, value in pairs:
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name + value):
            raise InvalidRequest("the query string contains a control character")
    return urlencode(pairs)


DEFAULT_SEARCHES = 10  # searches reserved for a web search tool that sets no max_uses


def web_searches_asked(body: dict[str, Any]) -> int:
    """How many billed searches the request's tools may run (the reservation counts them): an Anthropic web search
    tool's `max_uses`, else DEFAULT_SEARCHES; one for Gemini's Google Search grounding; DEFAULT_SEARCHES for
    OpenAI's web search tool."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return 0
    total = 0
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if isinstance(kind, str) and kind.startswith("web_search"):
            uses = tool.get("max_uses")
            total += uses if isinstance(uses, int) and not isinstance(uses, bool) and 0 < uses <= 1000 \
                else DEFAULT_SEARCHES
        elif {"googleSearch", "google_search", "googleSearchRetrieval", "google_search_retrieval"} & tool.keys():
            total += 1
    return total


def searches_per_call(body: dict[str, Any], model: str | None) -> int:
    """Chat Completions search models search on every call (`web_search_options`), and their usage never says so."""
    return 1 if "web_search_options" in body or (model is not None and "search-preview" in model) else 0


def _names(value: Any) -> set[str]:
    """The modality names of a list, in upper case: Gemini reads its enum values in any case ("Image", "image")."""
    return {m.upper() for m in value if isinstance(m, str)} if isinstance(value, list) else set()


def _response_modalities(body: dict[str, Any]) -> set[str]:
    config = body.get("generationConfig") or body.get("generation_config")
    if isinstance(config, dict):
        return _names(config.get("responseModalities") or config.get("response_modalities"))
    return set()


def image_output_asked(body: dict[str, Any]) -> bool:
    return "IMAGE" in _response_modalities(body)


def audio_output_asked(body: dict[str, Any]) -> bool:
    return "AUDIO" in _names(body.get("modalities")) or "AUDIO" in _response_modalities(body)


def parse_call(*, method: str, provider: str, path: str, query: str, body: Any, raw_body: bytes,
               default_output: int, inject_limit: bool, compat: bool = False, model: str | None = None,
               json_error: RequestRefused | None = None, input_bound: int = 0,
               reference: tuple[str | None] | None = None) -> Call:
    """Build the canonical call. `body` is the strictly parsed JSON (or None); `model` is given for compat,
    where the body's `model` names the provider too; `input_bound` and `reference` (the input it loads by
    reference, in a 1-tuple; None: not measured, look now) were measured when the body was parsed.
    Raises a RequestRefused (InvalidRequest, LimitError...) for what cannot be represented faithfully."""
    endpoint, path_model = recognise(provider, method, path)
    query = canonical_query(query)
    if endpoint is None:
        return Call(method, provider, path, query, None, None, False, 1, None, False, None, body, raw_body, compat)
    if json_error is not None:
        raise json_error
    if not isinstance(body, dict):
        raise InvalidRequest(f"the body of {endpoint.name} must be a JSON object")
    if provider == "google-ai-studio":
        model = path_model
        stream = endpoint.name == "streamGenerateContent"
    else:
        model = model_name(model if model is not None else body.get("model"))
        asked = body.get("stream")
        if asked is not None and not isinstance(asked, bool):
            raise InvalidRequest("stream must be true or false", param="stream")
        stream = bool(asked)
    # compat bodies are Chat Completions whatever the provider; the translation carries the resolved number
    fields = output_limit.CHAT if compat else limit_fields(provider, endpoint, compat)
    if fields is None:
        return Call(method, provider, path, query, endpoint, model, stream, 1, None, True, None, body, raw_body,
                    compat, input_bound + MODEL_SLACK)
    limit = output_limit.resolve(fields, body, default_output)
    searches = max(web_searches_asked(body), searches_per_call(body, model))
    audio_out = audio_output_asked(body)
    # input loaded by reference (a stored conversation, a file by id or URL) is not in the body: bounded by the
    # model's whole context window
    referenced = reference[0] if reference is not None else measure_input(body)[1]
    bound = input_bound + MODEL_SLACK
    if referenced is not None:
        bound = max(bound, context_window(provider, model))
    # Anthropic requires max_tokens (natively and through compat): the reserved number is always written there
    include = limit.given or inject_limit or endpoint is MESSAGES
    body = output_limit.write(fields, body, limit, include=include)
    return Call(method, provider, path, query, endpoint, model, stream, limit.choices, limit.tokens, limit.given,
                limit.field if include else None, body, raw_body, compat, bound, searches,
                audio_out, image_output_asked(body), searches_per_call(body, model), _tier(body), referenced)


def _tier(body: dict[str, Any]) -> str | None:
    if body.get("speed") == "fast":  # Anthropic's fast mode, priced as its own variant
        return "fast"
    tier = body.get("service_tier")
    return tier if isinstance(tier, str) and tier in ("priority", "fast", "flex", "default", "auto", "scale") \
        else None


__all__ = ["decode_body", "load_json", "off_loop", "parse_call", "recognise"]
