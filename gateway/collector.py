"""The garbage collector of a process that serves the gateway (`spendgate serve`).

CPython's cyclic collector, at its defaults (a collection every 700 net allocations of container objects, a full
one every 100 of those), walks every tracked object on each full collection: ~170,000 of them once the app, its
libraries and the price catalogue are loaded. Under load that was a full collection every second or so, each
holding the event loop for ~55 ms, and ~15% of the process's CPU (bench/README.md, "The garbage collector").
Reference counting frees nearly everything a request allocates; the collector is only needed for cycles.

So once the app has started: everything alive then (modules, the catalogue, the pool) is moved out of the
collector's sight (`gc.freeze`: it is never collected, and was never going to be), and young objects are
collected after `YOUNG_THRESHOLD` net allocations instead of 700. Garbage cycles are still collected, later.
An application that mounts the gateway owns its process and keeps its own collector settings.
"""

from __future__ import annotations

import gc

from gateway.exchange import Usage
from gateway.pricing import catalogue_cost
from gateway.services import Running

YOUNG_THRESHOLD = 10_000
OLDER_THRESHOLDS = (10, 10)  # CPython's own: a middle collection every 10 young ones, a full one every 10 middle


def settle_for_serving() -> None:
    """Load what requests use lazily (the price catalogue), collect once, freeze what is alive, raise the
    threshold."""
    catalogue_cost("openai", "gpt-4o-mini", Usage(input_tokens=1, output_tokens=1))
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)


async def after_start(running: Running) -> None:
    """`Services.on_start` hook: the app is up, its pool open, before the first request."""
    settle_for_serving()
