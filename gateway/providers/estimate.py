"""The worst case a request can cost, in tokens, before it is sent.

Input: a byte-level BPE token is at least one byte of UTF-8, so the number of input tokens is at most the number
of bytes of text the provider turns into tokens. We count every string *and every key* of the JSON body (tool
schemas reach the model as text, keys included), numbers by their decimal length, plus a per-message allowance
for the role markers providers add (`MESSAGE_OVERHEAD`) and a fixed `BASE_OVERHEAD`. An image part counts
`IMAGE_TOKENS` (above what OpenAI, Anthropic and Gemini charge for one image at their maximum size) instead of
its inline data (a `data:` URL, Anthropic's base64 `source.data`, Gemini's `inlineData.data` of an `image/*`
type); everything else in the part — its other keys, a URL, whatever a client put beside the image — is counted
like text. Inside free-form JSON the provider reads as text (tool parameter schemas, response schemas, a tool
call's input or arguments, a function's response, metadata) nothing is taken for an image: a key named
`image_url` there is text. The bound is loose for text, which is the point: it is never below.

Input the provider loads by reference is not in the body: a stored response or conversation to continue
(`previous_response_id`, `conversation`), a stored prompt (`prompt.id`), a file by id or URL (`file_id`,
`file_url`, Anthropic's `url` and `file` document sources, Gemini's `fileData` that is not an image), Gemini's
`cachedContent`. `measure_input` names the first one a body has; such a call's input bound is the model's whole
context window (gateway/providers/call.py), and the gateway's own keys refuse it (gateway/providers/target.py).

Output: the call's resolved output limit times its choices (gateway/providers/output_limit.py, the one rule
that reads every limit field); without a limit, the gateway's `default_max_output_tokens`. Only a request without
a limit can cost more than reserved (the gateway setting `inject_max_tokens` closes that gap). Embeddings
produce no output tokens.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import NestedTooDeep
from gateway.shapes import FREE_FORM, TOOL_CALLS

IMAGE_TOKENS = 6_000
MESSAGE_OVERHEAD = 16
BASE_OVERHEAD = 64
_IMAGE_TYPES = ("image", "image_url", "input_image")


def _image_data(node: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """Where an image part keeps its inline data (the one string not counted as text), or None when `node` is not
    an image part. `(node, "")`: an image part without inline data (a URL, a file id: all of it counts)."""
    kind = node.get("type")
    url = node.get("image_url")
    if kind in _IMAGE_TYPES or url is not None or "input_image" in node:
        if type(url) is str and url.startswith("data:"):
            return node, "image_url"  # Responses: "image_url": "data:…"
        if type(url) is dict and type(url.get("url")) is str and url["url"].startswith("data:"):
            return url, "url"  # Chat Completions: "image_url": {"url": "data:…"}
        source = node.get("source")
        if kind == "image" and type(source) is dict and type(source.get("data")) is str:
            return source, "data"  # Anthropic: "source": {"type": "base64", "data": …}
        return node, ""
    # Gemini parts: only images have a fixed token count; audio and video count by their length, so their bytes
    # (far more than their tokens) are walked like text
    for key in ("inlineData", "inline_data", "fileData", "file_data"):
        inline = node.get(key)
        if type(inline) is dict:
            mime = inline.get("mimeType") or inline.get("mime_type")
            if type(mime) is str and mime.startswith("image/"):
                return (inline, "data") if type(inline.get("data")) is str else (node, "")
    return None


def _scalar(value: Any) -> int:
    """The bound of a string, number, boolean or null (containers are walked)."""
    if type(value) is str:
        return len(value) if value.isascii() else len(value.encode())
    if value is None or value is True or value is False:
        return 5
    return len(repr(value))


def input_token_bound(body: Any, max_depth: int | None = None) -> int:
    """The input bound of a parsed JSON body (`measure_input`'s first half)."""
    return measure_input(body, max_depth)[0]


def measure_input(body: Any, max_depth: int | None = None) -> tuple[int, str | None]:
    """The input bound of a parsed JSON body, and the first input it makes the provider load by reference, named
    (None: all of its input is in it), in one iterative walk (no recursion, whatever the nesting). Free-form JSON
    (schemas, tool inputs, metadata) is text: nothing in it is an image, and nothing under a FREE_FORM key a
    reference. With `max_depth`, a body nested deeper raises NestedTooDeep."""
    total = BASE_OVERHEAD
    reference = _stored_state(body)
    limit = max_depth if max_depth is not None else 1 << 62
    # (node, depth, inside free-form JSON, the key of `node` whose string is an image's inline data, under one of
    # the FREE_FORM keys: no reference is looked for there; a tool call's input, free-form too, is still looked into)
    # a body that is not an object is no call the gateway understands: no reference is looked for in it
    stack: list[tuple[Any, int, bool, str, bool]] = [(body, 1, False, "", type(body) is not dict)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth, free, skip, unreferenced = pop()
        if depth > limit:
            raise NestedTooDeep(limit)
        if type(node) is dict:
            image = None if free else _image_data(node)
            if not unreferenced and reference is None and (image if not free else _image_data(node)) is None:
                reference = _reference(node)  # an image by id or URL is one image, bounded as one
            if image is not None:
                total += IMAGE_TOKENS
                holder, key = image
                if holder is not node:
                    # the data sits one level down: walk that dict without its data string
                    skip = ""
                    for child_key, child in node.items():
                        total += len(child_key) if child_key.isascii() else len(child_key.encode())
                        if child is holder:
                            push((child, depth + 1, free, key, unreferenced or child_key in FREE_FORM))
                        elif type(child) is dict or type(child) is list:
                            push((child, depth + 1, free, "", unreferenced or child_key in FREE_FORM))
                        else:
                            total += _scalar(child)
                    continue
                skip = key
            if "role" in node:
                total += MESSAGE_OVERHEAD
            tool_call = node.get("type") in TOOL_CALLS
            for key, value in node.items():
                total += len(key) if key.isascii() else len(key.encode())
                if type(value) is dict or type(value) is list:
                    push((value, depth + 1, free or key in FREE_FORM or (tool_call and key == "input"), "",
                          unreferenced or key in FREE_FORM))
                elif key != skip or type(value) is not str:
                    total += _scalar(value)
        elif type(node) is list:
            for value in node:
                if type(value) is dict or type(value) is list:
                    push((value, depth + 1, free, "", unreferenced))
                else:
                    total += _scalar(value)
        else:
            total += _scalar(node)
    return total, reference


_STORED_STATE = ("previous_response_id", "conversation", "cachedContent", "cached_content")


def _stored_state(body: Any) -> str | None:
    """A stored response, conversation, cache or prompt the body continues from (its top-level fields), named."""
    if type(body) is not dict:
        return None
    for key in _STORED_STATE:
        if body.get(key) not in (None, "", {}):
            return key
    prompt = body.get("prompt")
    if type(prompt) is dict and prompt.get("id") is not None:
        return "prompt.id (a stored prompt)"
    return None


def _reference(node: dict[str, Any]) -> str | None:
    """Input a part (that is not an image) makes the provider load by reference, named."""
    if node.get("type") == "item_reference":
        return "a stored item (item_reference)"
    if node.get("file_id") is not None:
        return "a file by id (file_id)"
    if node.get("file_url") is not None:
        return "a file by URL (file_url)"
    source = node.get("source")
    if type(source) is dict and source.get("type") in ("url", "file"):
        return f"a document by {source['type']} (source.type {source['type']!r})"
    if type(node.get("fileData")) is dict or type(node.get("file_data")) is dict:
        return "a file by URI (fileData)"
    return None
