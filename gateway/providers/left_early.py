"""What a call costs when the client left before it ended (docs/refusals.md, "Clients that leave").

Once the call was handed to the provider, the provider has the prompt and bills it, so the call is never billed
$0. What the gateway knows, in order of preference:

- input tokens: the provider's own count when it sent one before the client left (Anthropic's `message_start`),
  else the request's worst-case input bound (gateway/providers/estimate.py: at least one byte per token, so never
  below what the provider counts). No tokenizer ships offline for every provider's models, so the bound it is;
- output tokens: the provider's count when it sent one, else what was delivered to the client: the text of the
  delivered events in UTF-8 bytes divided by four (the usual bytes per token of English text), and at least one
  token per delivered event that carried text (providers send one or more tokens per delta). Output the provider
  generated but the gateway never relayed is not known and not billed: the gateway stops the upstream as soon as
  the client is gone, so it is at most what was in flight. Never more than the output limit the provider was
  sent, when it was sent one.

Such a log row says `usage_estimated: true`.
"""

from __future__ import annotations

import re
from dataclasses import replace

from gateway.exchange import Exchange, Usage

BYTES_PER_TOKEN = 4
# the string values that carry generated text in the providers' stream events
_TEXT = re.compile(r'"(?:content|text|delta|partial_json|arguments|thinking|refusal)"\s*:\s*"((?:[^"\\]|\\.)*)"')


def delivered_text(data: str) -> int:
    """Bytes of generated text in one event's data (escapes counted as written: a fair approximation)."""
    if '"' not in data:
        return 0
    return sum(len(m.group(1).encode()) for m in _TEXT.finditer(data))


def count_delivered(ex: Exchange, data: str) -> None:
    """Count the generated text in one stream event (or JSON answer) the client was sent, for an estimate."""
    text = delivered_text(data)
    if text:
        ex.delivered_events += 1
        ex.delivered_text += text


def estimated_usage(reported: Usage, input_bound: int, text_events: int, text_bytes: int,
                    output_cap: int | None) -> Usage:
    """`output_cap`: the output limit the provider was sent (times choices); it cannot have generated more. The
    components the provider did report (cache, audio, searches, tier) are kept."""
    seen = max(text_events, -(-text_bytes // BYTES_PER_TOKEN))
    if output_cap is not None:
        seen = min(seen, output_cap)
    return replace(
        reported,
        input_tokens=reported.input_tokens if reported.input_tokens is not None else input_bound,
        output_tokens=max(reported.output_tokens or 0, seen),
    )
