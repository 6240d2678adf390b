"""The pieces a range is read in: added and subtracted, they cover each instant of [from, to) exactly once and
nothing else; a partial day or week is read as its whole bucket less the rest when that reads fewer rows."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from gateway.analytics.store import Segment, segments

BASE = datetime(2026, 9, 1, tzinfo=UTC)


def coverage(pieces: list[Segment], at: datetime) -> int:
    return sum(p.sign for p in pieces if p.start <= at < p.end)


def test_signed_pieces_cover_the_range_exactly_once() -> None:
    rnd = random.Random(3)
    for _ in range(120):
        start = BASE + timedelta(minutes=rnd.randrange(60 * 24 * 40))
        end = start + timedelta(minutes=rnd.choice([0, 7, 60, 600, 1440, 3000]) + rnd.randrange(60 * 24 * 45))
        for daily, weekly in ((True, True), (True, False), (False, False)):
            pieces = segments(start, end, daily=daily, weekly=weekly)
            assert all(p.start < p.end for p in pieces)
            assert all(p.sign == 1 for p in pieces if p.table == "raw")
            if not daily:
                assert {p.table for p in pieces} <= {"raw", "hourly"}
            if not weekly:
                assert "weekly" not in {p.table for p in pieces}
            at = start - timedelta(hours=30)
            while at < end + timedelta(hours=30):  # every 13 minutes: each hour is probed at several minutes
                assert coverage(pieces, at) == (1 if start <= at < end else 0), (start, end, daily, weekly, at)
                at += timedelta(minutes=13)
            for p in pieces:  # rollup pieces on their buckets' boundaries
                step = {"hourly": timedelta(hours=1), "daily": timedelta(days=1), "weekly": timedelta(days=7)}
                if p.table != "raw":
                    assert (p.start - BASE) % step[p.table] == timedelta(0) or p.table == "weekly"
                    assert (p.end - p.start) % step[p.table] == timedelta(0)
                if p.table == "weekly":
                    assert p.start.weekday() == 0 and p.start.hour == 0


def test_a_mostly_full_day_or_week_is_read_whole_less_the_rest() -> None:
    # from a Tuesday 02:30 to a Thursday 21:10, four weeks later
    start = datetime(2026, 11, 3, 2, 30, tzinfo=UTC)
    end = datetime(2026, 12, 3, 21, 10, tzinfo=UTC)
    pieces = segments(start, end, weekly=True)
    # the days from Tuesday (its first three hours less) to Thursday (its last three hours less): whole weeks from
    # Monday to Monday less that first Monday and less the Friday to Sunday after
    assert sorted(pieces, key=lambda p: (p.table, p.start)) == [
        Segment("daily", datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC), -1),
        Segment("daily", datetime(2026, 12, 4, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC), -1),
        Segment("hourly", datetime(2026, 11, 3, tzinfo=UTC), datetime(2026, 11, 3, 3, tzinfo=UTC), -1),
        Segment("hourly", datetime(2026, 12, 3, 21, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC), -1),
        Segment("raw", start, datetime(2026, 11, 3, 3, tzinfo=UTC)),
        Segment("raw", datetime(2026, 12, 3, 21, tzinfo=UTC), end),
        Segment("weekly", datetime(2026, 11, 2, tzinfo=UTC), datetime(2026, 12, 7, tzinfo=UTC)),
    ]
