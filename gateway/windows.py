"""Budget windows.

Fixed windows are UTC-aligned: a day starts at 00:00, a week on Monday 00:00, a month on the 1st 00:00.
Rolling windows are the last 24 h, 7 days or 30 days, counted in slices of 1/48 of the window (30 min, 3.5 h,
15 h). A slice counts in full while any part of it lies inside the window, so spend ages out at most one slice
late and never early: a rolling budget is never under-counted.

Rate limits count in an `Interval` of any number of seconds: fixed intervals are aligned to the Unix epoch (a 60 s
interval starts on every whole minute); sliding ones are the last `seconds`, counted in slices of a tenth of it,
each counted in full while it overlaps the interval (so, like rolling windows, never under-counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

WindowName = Literal["daily", "weekly", "monthly"]
WindowType = Literal["fixed", "rolling"]

WINDOWS: tuple[WindowName, ...] = ("daily", "weekly", "monthly")
WINDOW_TYPES: tuple[WindowType, ...] = ("fixed", "rolling")
ROLLING_LENGTH = {"daily": timedelta(days=1), "weekly": timedelta(days=7), "monthly": timedelta(days=30)}
SLICES_PER_WINDOW = 48
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC time")
    return now.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    name: WindowName
    type: WindowType

    @property
    def slice_length(self) -> timedelta:
        return ROLLING_LENGTH[self.name] / SLICES_PER_WINDOW

    def start(self, now: datetime) -> datetime:
        """Fixed: the window's start. Rolling: the start of the slice `now` falls in (where spend is counted)."""
        now = _utc(now)
        if self.type == "rolling":
            length = self.slice_length
            return EPOCH + ((now - EPOCH) // length) * length
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.name == "daily":
            return day
        if self.name == "weekly":
            return day - timedelta(days=day.weekday())
        return day.replace(day=1)

    def end(self, now: datetime) -> datetime:
        """Fixed: when the window resets. Rolling: when the current slice closes."""
        start = self.start(now)
        if self.type == "rolling":
            return start + self.slice_length
        if self.name == "daily":
            return start + timedelta(days=1)
        if self.name == "weekly":
            return start + timedelta(days=7)
        return (start + timedelta(days=32)).replace(day=1)

    def counted_since(self, now: datetime) -> datetime:
        """Rolling: the earliest slice start that still counts at `now`. Fixed: the window start."""
        if self.type == "fixed":
            return self.start(now)
        return self.start(_utc(now) - ROLLING_LENGTH[self.name])

    def retry_after(self, now: datetime, slices: list[tuple[datetime, int]], needed: int) -> datetime:
        """When enough spend will have aged out (rolling) or the window resets (fixed).

        `slices` are (slice_start, spent) of the rolling bucket, `needed` the nano-USD that must age out.
        """
        if self.type == "fixed":
            return self.end(now)
        freed = 0
        length = ROLLING_LENGTH[self.name]
        for start, spent in sorted(slices):
            freed += spent
            if freed >= needed:
                # the slice stops counting once its end has left the window
                return max(start + self.slice_length + length, _utc(now))
        return self.end(now) + length


SLIDING_SLICES = 10


@dataclass(frozen=True)
class Interval:
    """A rate limit's window: `seconds` long, fixed (epoch-aligned) or sliding (slices of a tenth of it)."""

    seconds: int
    sliding: bool

    @property
    def length(self) -> timedelta:
        return timedelta(seconds=self.seconds)

    @property
    def slice_length(self) -> timedelta:
        return self.length / SLIDING_SLICES if self.sliding else self.length

    def start(self, now: datetime) -> datetime:
        """Fixed: the interval's start. Sliding: the start of the slice `now` falls in (where requests count)."""
        length = self.slice_length
        return EPOCH + ((_utc(now) - EPOCH) // length) * length

    def end(self, now: datetime) -> datetime:
        """Fixed: when the interval resets. Sliding: when the current slice closes."""
        return self.start(now) + self.slice_length

    def counted_since(self, now: datetime) -> datetime:
        """Sliding: the earliest slice start that still counts at `now` (the slice `now - seconds` falls in).
        Fixed: the interval's start."""
        if not self.sliding:
            return self.start(now)
        return self.start(_utc(now) - self.length)

    def frees_at(self, now: datetime) -> datetime:
        """When some of what is counted now stops counting: a fixed interval's end; the oldest counted slice's
        leaving the sliding interval (within one slice of `now`)."""
        if not self.sliding:
            return self.end(now)
        return self.counted_since(now) + self.slice_length + self.length

    def retry_after(self, now: datetime, slices: list[tuple[datetime, int]], needed: int) -> datetime:
        """When `needed` units will have left the interval: a fixed interval's end; sliding, when enough of
        `slices` ((slice_start, counted) still in the interval) have aged out."""
        if not self.sliding:
            return self.end(now)
        freed = 0
        for start, counted in sorted(slices):
            freed += counted
            if freed >= needed:
                return max(start + self.slice_length + self.length, _utc(now))
        return self.end(now) + self.length
