"""The web dashboard at `/dashboard`: credits, spend over time, spend limits, anomalies and request logs, for a
person who would rather look than read JSON. Served by the gateway itself; see gateway/dashboard/app.py."""
