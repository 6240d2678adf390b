"""BodyScan: what an answer too large to buffer says about its price, read from every byte whatever the chunks."""

from __future__ import annotations

from gateway.providers.router import BodyScan


def _scan(body: bytes, size: int) -> BodyScan:
    scan = BodyScan()
    for i in range(0, len(body), size):
        scan.feed(body[i:i + size])
    return scan


def test_searches_and_tiers_are_found_across_chunk_boundaries() -> None:
    body = (b'{"output": [' + b",".join([b'{"type": "web_search_call", "id": "ws"}'] * 7) + b'], "pad": "'
            + b"x" * 5000 + b'", "service_tier": "priority", "tools": [{"service_tier": "flex"}]}')
    for size in (1, 3, 7, 16, 64, 1000, len(body)):
        scan = _scan(body, size)
        assert scan.searches == 7, size
        assert scan.tiers == {"priority", "flex"}, size
        assert scan.tier(None) == "priority"  # a planted cheaper tier never lowers the price


def test_tier_when_the_body_names_none() -> None:
    scan = _scan(b'{"usage": {"input_tokens": 1}}', 5)
    assert scan.tier("priority") == "priority"  # asked for the dearer tier: billed at it
    assert scan.tier("flex") is None and scan.tier("auto") is None and scan.tier(None) is None
