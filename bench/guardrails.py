"""Guardrails: each detector's precision and recall on the labelled corpus the tests use
(tests/guardrails/corpus.json, read as data), and the CPU time the checks add per KB of prompt and of streamed
answer. Prints the README's tables.

    .venv/bin/python bench/guardrails.py [--kb 64] [--rounds 20]

Latency is CPU time (time.process_time) of this process, every category on with `redact`, on text made of the
corpus's sentences (mostly look-alikes, some findings), median of the rounds:
- prompt: an OpenAI chat body of N KB through the same functions the Guardrails layer runs (every text string
  checked and rewritten, the input bound measured again);
- stream: the same text as a chat completion stream of ~4-character deltas through the stream redactor (parse each
  event, hold back, re-encode the events that changed).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.guardrails.categories import CATEGORIES  # noqa: E402
from gateway.guardrails.payload import redact_json  # noqa: E402
from gateway.guardrails.scanner import Rules, find  # noqa: E402
from gateway.guardrails.sse import StreamRedactor  # noqa: E402
from gateway.providers.estimate import input_token_bound  # noqa: E402

CORPUS = ROOT / "tests" / "guardrails" / "corpus.json"


def quality(samples: list[dict[str, Any]]) -> list[tuple[str, int, int, int, float, float]]:
    rules = Rules.of(set(CATEGORIES), set(CATEGORIES))
    counts = {c: [0, 0, 0] for c in CATEGORIES}
    for sample in samples:
        text = sample["text"]
        found = [(c, text[a:b]) for a, b, c in find(text, rules)]
        expected = [tuple(e) for e in sample["expect"]]
        for item in found:
            counts[item[0]][0 if item in expected else 1] += 1
        for item in expected:
            if item not in found:
                counts[item[0]][2] += 1
    rows = []
    for category, (tp, fp, fn) in counts.items():
        rows.append((category, tp, fp, fn, tp / (tp + fp) if tp + fp else 1.0, tp / (tp + fn) if tp + fn else 1.0))
    return rows


def text_of(samples: list[dict[str, Any]], kb: int) -> str:
    sentences = [s["text"] for s in samples if "PRIVATE KEY" not in s["text"]]
    out: list[str] = []
    size = 0
    i = 0
    while size < kb * 1024:
        sentence = sentences[(i * 7) % len(sentences)]  # a fixed walk through the corpus, looks-alikes mostly
        out.append(sentence)
        size += len(sentence) + 1
        i += 1
    return " ".join(out)[: kb * 1024]


def cpu(work: Any, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kb", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    samples = json.loads(CORPUS.read_text())["samples"]

    print(f"corpus: {len(samples)} texts, {sum(len(s['expect']) for s in samples)} labelled matches, "
          f"{sum(1 for s in samples if not s['expect'])} look-alikes\n")
    print("| detector | true pos. | false pos. | missed | precision | recall |")
    print("|---|---|---|---|---|---|")
    for category, tp, fp, fn, precision, recall in quality(samples):
        print(f"| `{category}` | {tp} | {fp} | {fn} | {precision:.2f} | {recall:.2f} |")

    rules = Rules.of(set(CATEGORIES), set(CATEGORIES))
    text = text_of(samples, args.kb)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": "You are helpful."},
                                                 {"role": "user", "content": text}]}

    def prompt() -> None:
        found: dict[str, int] = {}
        redacted = redact_json(body, rules, found)
        input_token_bound(redacted)

    base = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    events = b"".join(
        b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {"content": text[i:i + 4]},
                                                     "finish_reason": None}]}).encode() + b"\n\n"
        for i in range(0, len(text), 4)) + b"data: [DONE]\n\n"

    def stream() -> None:
        redactor = StreamRedactor(rules)
        for i in range(0, len(events), 1500):  # network-sized reads
            redactor.feed(events[i:i + 1500])
        redactor.finish()

    prompt_s = cpu(prompt, args.rounds)
    stream_s = cpu(stream, max(3, args.rounds // 4))
    print(f"\nCPU per KB of text ({args.kb} KB, median of {args.rounds} rounds, every category on):\n")
    print("| path | CPU per KB |")
    print("|---|---|")
    print(f"| prompt (JSON body, checked and rewritten) | {prompt_s / args.kb * 1e6:.0f} µs |")
    print(f"| streamed answer (~4-character deltas) | {stream_s / args.kb * 1e6:.0f} µs |")


if __name__ == "__main__":
    main()
