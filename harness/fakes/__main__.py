"""Run one fake provider on loopback, to try the gateway without a provider account or the network:

    .venv/bin/python -m harness.fakes openai [--port 9000]      # or anthropic, google-ai-studio

It prints the line to put in `.env` (`SPENDGATE_UPSTREAM_OPENAI=http://127.0.0.1:9000/v1`); restart `make run`
and call the gateway as the README shows, with any key (the fake accepts every key and never forwards it). Answers
are deterministic ("Hello from fake-…" and the prompt's last words) with usage counted in words; the request
headers of common.py (`x-fake-usage`, `x-fake-delay-ms`, `x-fake-status`, …) shape them. What it received is kept
in memory (the last 256 requests). Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Callable

import uvicorn

from harness.fakes.anthropic import anthropic_app
from harness.fakes.common import FakeApp
from harness.fakes.gemini import gemini_app
from harness.fakes.openai import openai_app

# provider -> (the app, the path the gateway's upstream URL ends with, the settings suffix)
PROVIDERS: dict[str, tuple[Callable[[], FakeApp], str, str]] = {
    "openai": (lambda: openai_app("/v1"), "/v1", "OPENAI"),
    "anthropic": (anthropic_app, "", "ANTHROPIC"),
    "google-ai-studio": (gemini_app, "", "GOOGLE_AI_STUDIO"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m harness.fakes", description=__doc__.split("\n\n")[0])
    parser.add_argument("provider", choices=sorted(PROVIDERS))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args(argv)
    build, path, suffix = PROVIDERS[args.provider]
    app: FakeApp = build()
    # a long-running fake must not keep every request it ever got
    app.recorder.requests = app.state.requests = collections.deque(maxlen=256)  # type: ignore[assignment]
    app.recorder.seen = collections.deque(maxlen=256)  # type: ignore[assignment]
    print(f"fake {args.provider} on http://{args.host}:{args.port}{path}; in .env:\n"
          f"SPENDGATE_UPSTREAM_{suffix}=http://{args.host}:{args.port}{path}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
