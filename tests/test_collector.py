"""The garbage collector of a served gateway (gateway/collector.py): `spendgate serve`'s app freezes what is alive
once it has started and raises the young threshold; the app mounted elsewhere (`create_app`) leaves the host
process's collector alone. Each case runs in its own interpreter, so the suite's own collector is not touched."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent("""
    import asyncio, gc, json, sys
    DEFAULTS = gc.get_threshold()  # this interpreter's own, before anything of the gateway is imported
    from gateway.settings import Settings

    async def started(app):
        messages = [{"type": "lifespan.startup"}]
        sent = []
        async def receive():
            return messages.pop(0) if messages else await asyncio.Event().wait()
        async def send(message):
            sent.append(message["type"])
        task = asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
                                         receive, send))
        while not sent:
            await asyncio.sleep(0.01)
        assert sent == ["lifespan.startup.complete"], sent
        before = (gc.get_threshold(), gc.get_freeze_count(), gc.isenabled())
        # a garbage cycle made after the start is still collected
        class Node: pass
        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        found = gc.collect()
        await app.state.services.stop()
        task.cancel()
        return before, found

    settings = Settings(database_url=sys.argv[2], admin_token="collector-test-token")
    if sys.argv[1] == "served":
        from gateway.serve import served_app
        app = served_app(settings)
    else:
        from gateway.app import create_app
        app = create_app(settings, background=False)
    (threshold, frozen, enabled), found = asyncio.run(started(app))
    print(json.dumps({"threshold": threshold, "frozen": frozen, "enabled": enabled, "found": found,
                      "defaults": DEFAULTS}))
""")


def probe(kind: str, database_url: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, kind, database_url], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.timeout(180)
def test_served_app_freezes_the_start_and_raises_the_young_threshold(database_url: str) -> None:
    from gateway.collector import OLDER_THRESHOLDS, YOUNG_THRESHOLD

    served = probe("served", database_url)
    assert served["threshold"] == [YOUNG_THRESHOLD, *OLDER_THRESHOLDS]
    assert isinstance(served["frozen"], int) and served["frozen"] > 50_000  # modules, the catalogue, the app
    assert served["enabled"] is True
    assert isinstance(served["found"], int) and served["found"] >= 2  # cycles are still collected


@pytest.mark.timeout(180)
def test_mounted_app_leaves_the_collector_alone(database_url: str) -> None:
    mounted = probe("mounted", database_url)
    assert mounted["threshold"] == mounted["defaults"]
    assert mounted["frozen"] == 0
    assert mounted["enabled"] is True
