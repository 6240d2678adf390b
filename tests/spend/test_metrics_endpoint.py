"""GET /metrics on a serving gateway: what the calls did shows up in Prometheus text (issue 6, item 5)."""

from __future__ import annotations

import re

import httpx

from tests.eventually import eventually_sync
from tests.spend.conftest import SpendStack
from tests.spend.test_strict_limits import chat


def value(text: str, metric: str, **labels: str) -> float:
    """The sample of `metric` whose labels include `labels` (0 when absent)."""
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name != metric or line.startswith("#"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest.partition("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_calls_refusals_tokens_cost_and_pool(spend_stack: SpendStack) -> None:
    account, base = spend_stack.new_gateway()
    spend_stack.rule(account, name="m", budget_usd="0.15", window="daily")
    byok = {"Authorization": "Bearer sk-client"}
    before = httpx.get(spend_stack.gateway.url + "/metrics").text
    assert chat(base, headers=byok).status_code == 200
    assert chat(base, headers=byok).status_code == 429
    spend_stack.settled()
    def counted(text: str) -> bool:
        # a request is counted once its answer has been sent in full, just after the client got its last byte
        return all(value(text, "spendgate_requests_total", provider="openai", model="gpt-4o-mini", status=status)
                   > value(before, "spendgate_requests_total", provider="openai", model="gpt-4o-mini", status=status)
                   for status in ("200", "429"))

    answer = eventually_sync(lambda: httpx.get(spend_stack.gateway.url + "/metrics"),
                             until=lambda a: counted(a.text), what="both requests counted")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    labels = {"provider": "openai", "model": "gpt-4o-mini"}
    for metric, extra, delta in [("spendgate_requests_total", {"status": "200"}, 1),
                                 ("spendgate_requests_total", {"status": "429"}, 1),
                                 ("spendgate_tokens_total", {"kind": "output"}, 100),
                                 ("spendgate_cost_usd_total", {}, 0.1)]:
        grew = value(text, metric, **labels, **extra) - value(before, metric, **labels, **extra)
        assert abs(grew - delta) < 1e-9, (metric, extra, grew)
    assert value(text, "spendgate_reservations_refused_total", reason="budget") \
        - value(before, "spendgate_reservations_refused_total", reason="budget") == 1
    assert value(text, "spendgate_upstream_ttfb_seconds_count", provider="openai") >= 1
    assert value(text, "spendgate_request_duration_seconds_count", provider="openai") >= 2
    assert value(text, "spendgate_db_pool_connections", state="max") == spend_stack.settings.db_pool_max
    assert "spendgate_holds_open " in text and "spendgate_log_queue_depth " in text
