"""Shared by the benchmarks: a fresh, migrated database (same order as the tests: TEST_DATABASE_URL or
BENCH_DATABASE_URL, a Testcontainers Postgres, the embedded Postgres), percentiles, one JSON line out."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

if os.environ.get("BENCH_DATABASE_URL"):
    os.environ["TEST_DATABASE_URL"] = os.environ["BENCH_DATABASE_URL"]

from harness.pg import fresh_database


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


__all__ = ["emit", "fresh_database", "percentile"]
