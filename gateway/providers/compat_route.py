"""The unified endpoint `/compat/chat/completions`: OpenAI chat format in and out, for every provider.

`model` is `{provider}/{model}`. OpenAI-format providers get the body with the bare model name; Anthropic and
Gemini get a translated body and their answers — JSON, SSE and errors — come back in OpenAI's shapes: the
target carries the call's translator (gateway/providers/compat.py), and the router relays through it as it
relays every call. Usage is read from the provider's own events by the same adapters as the native routes, so
the cost of a compat call is computed exactly like a direct one.

Keys: the SDK's `Authorization: Bearer <key>` is the provider key (pass-through); without it, a stored key or
unified billing applies as on the native routes.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidRequest, MethodNotAllowed, NotFound
from gateway.exchange import Exchange
from gateway.gateways import Gateway
from gateway.providers.base import Adapter, Translator
from gateway.providers.call import parse_call
from gateway.providers.compat import compat_endpoint, compat_translator
from gateway.providers.options import RequestOptions
from gateway.providers.store import ProviderConfigSnapshot
from gateway.providers.target import Target, resolve
from gateway.settings import Settings


def split_model(value: Any) -> tuple[str, str]:
    if not isinstance(value, str) or "/" not in value:
        raise InvalidRequest('model must be "{provider}/{model}", e.g. "anthropic/claude-sonnet-4-5"')
    provider, _, model = value.partition("/")
    if not provider or not model:
        raise InvalidRequest('model must be "{provider}/{model}"')
    return provider, model


def compat_target(ex: Exchange, gateway: Gateway, settings: Settings, config: ProviderConfigSnapshot, method: str,
                  rest: str, headers: dict[str, str], body: Any, options: RequestOptions,
                  limits: tuple[int, bool]) -> Target:
    """Parse the compat call (ex.call: the provider's upstream endpoint, the Chat Completions body with its output
    limit resolved) and resolve its target. `limits`: the gateway's (default_max_output_tokens, inject_max_tokens)."""
    if rest != "chat/completions":
        raise NotFound("the compat endpoint is /compat/chat/completions")
    if method != "POST":
        raise MethodNotAllowed(method, f"the compat endpoint answers POST, not {method}")
    if ex.json_error is not None:
        raise ex.json_error
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    provider, model = split_model(body.get("model"))
    stream = body.get("stream") is True
    path, query = compat_endpoint(provider, model, stream)
    ex.call = parse_call(method="POST", provider=provider, path=path, query=query, body=body, raw_body=b"",
                         default_output=limits[0], inject_limit=limits[1], compat=True, model=model,
                         input_bound=ex.input_bound,
                         reference=(ex.input_reference,) if ex.json_body is not None else None)
    if ex.call.endpoint is None:
        raise InvalidRequest(f"model {model!r} cannot be served by {provider} through the compat endpoint")
    scheme, _, token = headers.get("authorization", "").partition(" ")
    client_key = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    stream_options = ex.call.body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

    def translator(adapter: Adapter) -> Translator:
        return compat_translator(provider, model, adapter, stream=stream, include_usage=include_usage)

    return resolve(exchange=ex, gateway=gateway, settings=settings, config=config, call=ex.call, headers=headers,
                   options=options, client_key=client_key, translator=translator)
