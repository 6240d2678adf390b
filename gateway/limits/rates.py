"""A request's rate-limit lines, and what a reservation's answer says about its rate limits.

`rate_lines` makes the `BucketLine`s of the rules (gateway/limits/rate_rules.py) that apply to a request: a fixed
interval's row, or a sliding interval's current slice with the start of the slices still counted, exactly as a
rolling spend window's (the same SQL counts both). They go into the same `Limits.reserve` call as the request's
spend lines and credit hold. Cached like `bucket_lines`: one hot bucket's requests share the same line objects, so
a batch sends that line once.

From the answer (`Outcome`): `tightest` is the matched rate limit with the least left after this request (the
`x-ratelimit-*` headers describe it), `refusal` the rate limit that refused it (the tightest of those that
overflowed) and when it will have room.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gateway.db import Database
from gateway.errors import RateLimitExceeded
from gateway.limits.buckets import room_at
from gateway.limits.rate_rules import UNITS, RateRule
from gateway.limits.reservations import BucketLine, BucketState, Outcome, _hashable, _remember

_LinesEntry = tuple[tuple[RateRule, ...], datetime, datetime, list[BucketLine]]
_LINES: dict[tuple[Any, ...], _LinesEntry] = {}


def rate_lines(rules: Sequence[RateRule], attributes: dict[str, Any], now: datetime,
               units: tuple[str, ...] = UNITS) -> list[BucketLine]:
    """The lines of the rules counting one of `units` that apply to a request with these `attributes`."""
    if not rules:
        return []
    names = sorted({d.name for r in rules for d in r.dimensions})
    try:
        key = (tuple(map(id, rules)), units, tuple(_hashable(attributes.get(n)) for n in names))
        hit = _LINES.get(key)
    except TypeError:  # an attribute value that cannot be a key: no caching
        return _rate_lines(rules, attributes, now, units)
    if hit is not None and hit[1] <= now < hit[2]:
        return list(hit[3])
    lines = _rate_lines(rules, attributes, now, units)
    valid_from = max(r.interval.start(now) for r in rules)
    valid_until = min(r.interval.end(now) for r in rules)
    _remember(_LINES, key, (tuple(rules), valid_from, valid_until, lines))  # keeps the rules (and their ids) alive
    return list(lines)


def _rate_lines(rules: Sequence[RateRule], attributes: dict[str, Any], now: datetime,
                units: tuple[str, ...]) -> list[BucketLine]:
    lines = []
    for rule in rules:
        if rule.unit not in units:
            continue
        interval = rule.interval
        start = interval.start(now)
        since = interval.counted_since(now) if interval.sliding else None
        for key in rule.bucket_keys(attributes):
            lines.append(BucketLine(rule, key, start, since, start, rule.unit))
    return sorted(lines, key=lambda line: (line.rule.id, line.key))


def taken(line: BucketLine, outcome: Outcome) -> int:
    """What this request takes of a rate line's bucket: 1 request, or its token bound."""
    return 1 if line.unit == "requests" else outcome.tokens


@dataclass(frozen=True)
class RateState:
    """A matched rate limit after this request: its limit, what is left (in its unit) and when some frees up."""

    rule: RateRule
    limit: int
    remaining: int
    resets_at: datetime

    def reset_s(self, now: datetime) -> int:
        return max(0, math.ceil((self.resets_at - now).total_seconds()))


def tightest(outcome: Outcome, now: datetime) -> RateState | None:
    """The matched rate limit with the least left after this request (as the reservation saw the buckets); None
    when no rate limit matched."""
    best: RateState | None = None
    for state in outcome.states:
        if not isinstance(state.line.rule, RateRule):
            continue
        left = state.remaining_nano - (taken(state.line, outcome) if outcome.ok else 0)
        rule = state.line.rule
        if best is None or left < best.remaining:
            best = RateState(rule, rule.limit, left, rule.interval.frees_at(now))
    return best


def headers(state: RateState | None, now: datetime) -> list[tuple[bytes, bytes]]:
    if state is None:
        return []
    return [(b"x-ratelimit-limit", str(state.limit).encode()),
            (b"x-ratelimit-remaining", str(max(state.remaining, 0)).encode()),
            (b"x-ratelimit-reset", str(state.reset_s(now)).encode())]


async def refusal(db: Database, outcome: Outcome, now: datetime) -> RateLimitExceeded | None:
    """The rate limit that refused the request (the one with the least room, of those that overflowed), and when
    it will have room for it; None when no rate limit overflowed."""
    over = [s for s in outcome.exceeded if isinstance(s.line.rule, RateRule)]
    if not over:
        return None
    state: BucketState = min(over, key=lambda s: s.remaining_nano - taken(s.line, outcome))
    rule = state.line.rule
    assert isinstance(rule, RateRule)
    resets = await room_at(db, state, taken(state.line, outcome), now)
    if resets <= now:  # pending reservations hold it, not counted ones: a fixed-window-like wait of one slice
        resets = now + min(rule.interval.slice_length, timedelta(seconds=rule.interval.seconds))
    return RateLimitExceeded(rule=rule.name, unit=rule.unit, limit=rule.limit, remaining=state.remaining_nano,
                             resets_at=resets, refused_at=now)
