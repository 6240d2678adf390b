"""Analytics over the request log: rollups, queries, forecasts and anomalies (docs/analytics.md)."""
