from __future__ import annotations

from decimal import Decimal

import httpx
from starlette.applications import Starlette
from starlette.routing import Route

from gateway.exchange import Exchange, Usage
from gateway.metrics import MAX_MODELS, Metrics


async def test_observe_and_expose() -> None:
    metrics = Metrics(pool_stats=lambda: (5, 2, 20))
    exchange = Exchange(provider="openai", model="gpt-5", status_code=200, ttfb_ms=12.0,
                        usage=Usage(input_tokens=10, output_tokens=3), cost_usd=Decimal("0.25"))
    metrics.observe(exchange, 0.05)
    metrics.observe(Exchange(provider="openai", model="gpt-5", status_code=429), 0.001)
    app = Starlette(routes=[Route("/metrics", metrics.endpoint)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as client:
        text = (await client.get("/metrics")).text
    assert 'spendgate_requests_total{model="gpt-5",provider="openai",status="200"} 1.0' in text
    assert 'spendgate_tokens_total{kind="input",model="gpt-5",provider="openai"} 10.0' in text
    assert 'spendgate_cost_usd_total{model="gpt-5",provider="openai"} 0.25' in text
    assert 'spendgate_reservations_refused_total{reason="budget"} 1.0' in text
    assert 'spendgate_db_pool_connections{state="in_use"} 3.0' in text
    assert "spendgate_upstream_ttfb_seconds_bucket" in text


def test_model_label_is_bounded() -> None:
    metrics = Metrics()
    for i in range(MAX_MODELS + 10):
        metrics.observe(Exchange(provider="p", model=f"m{i}", status_code=200), 0.01)
    assert metrics._model("brand-new") == "other"
    assert metrics._model("m0") == "m0"
