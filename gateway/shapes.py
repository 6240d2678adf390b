"""What the providers' JSON shapes share, for the code that walks a body without knowing its provider (the input
bound, gateway/providers/estimate.py; the guardrails' scan, gateway/guardrails/payload.py).

Free-form JSON: values the model reads as text whatever they contain — JSON schemas (tool parameters, response
formats), a tool call's input or arguments, a function's response or output, metadata. Under these keys nothing is
an image part or an identifier: every string, key and number is text to the model."""

from __future__ import annotations

FREE_FORM = frozenset({
    "parameters", "input_schema", "schema", "json_schema", "properties", "response_format", "format",
    "responseSchema", "response_schema", "responseJsonSchema", "response_json_schema", "parametersJsonSchema",
    "parameters_json_schema", "args", "arguments", "response", "metadata", "output",
})
# Anthropic blocks whose `input` is free-form (a tool call's arguments)
TOOL_CALLS = ("tool_use", "server_tool_use", "mcp_tool_use")
