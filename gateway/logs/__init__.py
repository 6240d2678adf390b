"""Request logs: one row per request (refused ones included), written in batches after the response."""
