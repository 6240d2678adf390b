"""Prometheus metrics: one registry per app, served at GET /metrics.

Labels are bounded: provider and model come from the gateway's own routing (a client cannot invent a provider;
a model name is whatever the client asked, so the `model` label is capped to `MAX_MODELS` distinct values per
process, past which it reads `other`), status codes are grouped to their exact value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from gateway.exchange import Exchange

MAX_MODELS = 200
REFUSALS = {402: "credit", 403: "policy", 429: "budget", 503: "database_unavailable"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _PoolCollector(Collector):
    def __init__(self, pool_stats: Callable[[], tuple[int, int, int] | None]) -> None:
        self.pool_stats = pool_stats

    def collect(self) -> Iterable[GaugeMetricFamily]:
        stats = self.pool_stats()
        size = GaugeMetricFamily("spendgate_db_pool_connections", "Database pool connections", labels=["state"])
        if stats is not None:
            total, idle, maximum = stats
            size.add_metric(["in_use"], total - idle)
            size.add_metric(["idle"], idle)
            size.add_metric(["max"], maximum)
        yield size


class Metrics:
    def __init__(self, pool_stats: Callable[[], tuple[int, int, int] | None] = lambda: None,
                 holds_open: Callable[[], int] | None = None, log_queue: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("spendgate_requests", "Requests by provider, model and status",
                                ["provider", "model", "status"], registry=r)
        self.latency = Histogram("spendgate_request_duration_seconds", "Whole request duration",
                                 ["provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttfb = Histogram("spendgate_upstream_ttfb_seconds", "Time to the upstream's first byte",
                              ["provider"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("spendgate_tokens", "Tokens by provider, model and kind",
                              ["provider", "model", "kind"], registry=r)
        self.cost = Counter("spendgate_cost_usd", "Cost in USD by provider and model", ["provider", "model"],
                            registry=r)
        self.refused = Counter("spendgate_reservations_refused", "Requests refused before the call, by reason",
                               ["reason"], registry=r)
        self.holds_open = Gauge("spendgate_holds_open", "Reservations this instance holds, not yet settled",
                                registry=r)
        self.log_queue = Gauge("spendgate_log_queue_depth", "Log rows waiting to be written", registry=r)
        if holds_open is not None:
            self.holds_open.set_function(holds_open)
        if log_queue is not None:
            self.log_queue.set_function(log_queue)
        self.registry.register(_PoolCollector(pool_stats))
        self._models: set[str] = set()
        # each metric's children by their label values, found once (`labels` checks and locks on every call);
        # bounded like the labels themselves
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def _model(self, model: str | None) -> str:
        if model is None:
            return ""
        if model in self._models or len(self._models) < MAX_MODELS:
            self._models.add(model)
            return model
        return "other"

    def observe(self, exchange: Exchange, duration_s: float) -> None:
        provider = exchange.provider or ""
        model = self._model(exchange.model)
        status = str(exchange.status_code or 0)
        child = self._child
        child(self.requests, provider, model, status).inc()
        child(self.latency, provider).observe(duration_s)
        if exchange.ttfb_ms is not None:
            child(self.ttfb, provider).observe(exchange.ttfb_ms / 1000)
        usage = exchange.usage
        for kind, value in (("input", usage.input_tokens), ("output", usage.output_tokens),
                            ("cache_read", usage.cache_read_tokens), ("cache_write", usage.cache_write_tokens)):
            if value:
                child(self.tokens, provider, model, kind).inc(value)
        if exchange.cost_usd is not None:
            # Prometheus counters are floats; the ledger, not this counter, is the record of money.
            child(self.cost, provider, model).inc(float(exchange.cost_usd))
        if exchange.status_code in REFUSALS:
            child(self.refused, REFUSALS[exchange.status_code]).inc()

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type="text/plain; version=0.0.4; charset=utf-8")
