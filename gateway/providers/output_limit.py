"""The output limit of a call: every limit field of a request resolved by one rule, in one place.

What the provider may generate is what the reservation is made for, so the same number must be what the provider
receives. Per endpoint, the fields that carry a limit (an alias list: `max_completion_tokens` and `max_tokens` on
Chat Completions), the field that carries the number of choices (`n`, `candidateCount`) and where the gateway
writes the limit when it reserved for its default.

Rules (docs/refusals.md):
- a field set to `null` counts as absent (that is how the providers read it);
- a limit must be an integer from 1 to `MAX_OUTPUT_TOKENS`, choices from 1 to `MAX_CHOICES`; anything else
  (a string, a float such as `1e15`, a boolean, 0, a negative number) is refused with 400 naming the field;
- two aliases that are both set must agree, else 400 (a provider would read one of them, we cannot know which);
- the forwarded body carries the resolved limit in one field (the one the client used, or the endpoint's own
  field when the gateway writes its default), and none of the aliases, so it cannot be read two ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.errors import LimitError

MAX_OUTPUT_TOKENS = 10_000_000  # above any model's output cap; keeps every estimate far inside nano-USD's range
MAX_CHOICES = 128
MAX_THINKING_TOKENS = MAX_OUTPUT_TOKENS


@dataclass(frozen=True)
class LimitFields:
    limits: tuple[str, ...]  # alias names, in the order they are preferred when writing
    choices: str | None  # "n" / "candidateCount"
    container: str | None = None  # Gemini: the fields live in `generationConfig`
    default: str | None = None  # the field written when the client set none (first alias when None)
    max_choices: int = MAX_CHOICES


CHAT = LimitFields(("max_completion_tokens", "max_tokens"), "n")
CHAT_OTHER = LimitFields(("max_completion_tokens", "max_tokens"), "n", default="max_tokens")  # groq, grok, custom
RESPONSES = LimitFields(("max_output_tokens",), None)
MESSAGES = LimitFields(("max_tokens",), None)
GEMINI = LimitFields(("maxOutputTokens", "max_output_tokens"), "candidateCount", container="generationConfig",
                     max_choices=8)
_GEMINI_CONTAINERS = ("generationConfig", "generation_config")
_GEMINI_CHOICES = ("candidateCount", "candidate_count")


@dataclass(frozen=True)
class OutputLimit:
    tokens: int  # per choice
    choices: int
    given: bool  # the client set it
    field: str  # where it is (or goes) in the body, dotted for Gemini


def _bounded_int(value: Any, field: str, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise LimitError(field, f"{field} must be an integer from 1 to {high}")
    return value


def _one_of(obj: dict[str, Any], names: tuple[str, ...], high: int, where: str = "") -> tuple[int | None, str | None]:
    """The value of the aliases `names` in `obj` (None when all are absent or null); 400 when set ones disagree."""
    found: int | None = None
    used: str | None = None
    for name in names:
        value = obj.get(name)
        if value is None:
            continue
        number = _bounded_int(value, where + name, high)
        if found is not None and number != found:
            raise LimitError(where + name, f"{where}{used} and {where}{name} disagree ({found} and {number})")
        if found is None:
            found, used = number, name
    return found, used


def _gemini_config(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    present = [name for name in _GEMINI_CONTAINERS if body.get(name) is not None]
    if len(present) > 1:
        raise LimitError("generationConfig", "send generationConfig or generation_config, not both")
    if not present:
        return {}, "generationConfig"
    config = body[present[0]]
    if not isinstance(config, dict):
        raise LimitError(present[0], f"{present[0]} must be an object")
    return config, present[0]


def resolve(fields: LimitFields, body: dict[str, Any], default: int) -> OutputLimit:
    """The limit the call is reserved for and forwarded with. Raises LimitError (400)."""
    if fields.container is not None:
        obj, container = _gemini_config(body)
        where = container + "."
        choices, _ = _one_of(obj, _GEMINI_CHOICES, fields.max_choices, where)
        budget = obj.get("thinkingConfig", obj.get("thinking_config"))
        if budget is not None and not isinstance(budget, dict):
            raise LimitError(where + "thinkingConfig", f"{where}thinkingConfig must be an object")
    else:
        obj, where = body, ""
        choices = None
        if fields.choices is not None:
            choices, _ = _one_of(body, (fields.choices,), fields.max_choices)
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("budget_tokens") is not None:
            _bounded_int(thinking["budget_tokens"], "thinking.budget_tokens", MAX_THINKING_TOKENS)
    tokens, used = _one_of(obj, fields.limits, MAX_OUTPUT_TOKENS, where)
    name = where + (used or fields.default or fields.limits[0])
    if tokens is None:
        return OutputLimit(default, choices or 1, False, name)
    return OutputLimit(tokens, choices or 1, True, name)


def write(fields: LimitFields, body: dict[str, Any], limit: OutputLimit, *, include: bool) -> dict[str, Any]:
    """The body with the limit in exactly one field (`include`), or in none (the aliases set to null dropped)."""
    if fields.container is not None:
        config, container = _gemini_config(body)
        config = {k: v for k, v in config.items() if k not in fields.limits}
        if include:
            config[limit.field.rsplit(".", 1)[1]] = limit.tokens
        out = {k: v for k, v in body.items() if k not in _GEMINI_CONTAINERS}
        if config or container in body:
            out[container] = config
        return out
    out = {k: v for k, v in body.items() if k not in fields.limits}
    if include:
        out[limit.field] = limit.tokens
    return out
