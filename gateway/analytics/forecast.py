"""Burn-rate forecasts: how fast a bucket or a balance is spent, and when it runs out at that rate.

Method (`METHOD`), from the daily spend of the last 28 complete UTC days (days before the first spend are not
history):

1. Weekday profile: with at least 14 days of history, each weekday's factor is the mean ratio of its days'
   spend to a least-squares line through the history (so a trend does not leak into it; factors average 1);
   with less, every factor is 1.
2. Level and trend: the spend of each day divided by its weekday's factor; with at least 14 days, a least-squares
   line through those values (so a growing or shrinking spend is followed), else their mean (flat).
   With no complete day yet, today's spend so far over the part of today that has passed (at least one hour).
3. The rate of a future day is the line's value there (never below 0) times its weekday's factor;
   `rate_usd_per_day` is today's.
4. `exhausted_at`: walking forward from now, day by day at those rates (spend spread evenly over each day), when
   the projected spend reaches what is left. A fixed window stops the walk at its end (null: it resets first); a
   rolling window looks one window length ahead and lets the spend of one window ago age out meanwhile; a credit
   balance looks a year ahead (auto top-ups aside). Nothing left already: now.

The figures are estimates: floats, rounded to nano-USD at the end; no money moves on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from gateway.money import usd_str

METHOD = "trend-weekday-28d"
HISTORY_DAYS = 28
PROFILE_MIN_DAYS = 14
DAY = timedelta(days=1)
BALANCE_HORIZON = timedelta(days=365)


@dataclass(frozen=True)
class Forecast:
    rate_nano_per_day: int
    exhausted_at: datetime | None
    method: str = METHOD

    def to_json(self) -> dict[str, Any]:
        return {"rate_usd_per_day": usd_str(self.rate_nano_per_day),
                "exhausted_at": None if self.exhausted_at is None else
                self.exhausted_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
                "method": self.method}


@dataclass(frozen=True)
class RateModel:
    """Projected spend per day (nano-USD) of any day from today on: `level + slope * (days after today)`, times
    the weekday's factor."""

    today: date
    level: float
    slope: float
    profile: tuple[float, ...]  # Monday .. Sunday

    def rate(self, day: date) -> float:
        ahead = (day - self.today).days
        return max(0.0, self.level + self.slope * ahead) * self.profile[day.weekday()]


def fit(history: Mapping[date, int], now: datetime) -> RateModel:
    """The rate model of a daily spend history (nano-USD per UTC day; today's partial day included if present)."""
    now = now.astimezone(UTC)
    today = now.date()
    first = min((d for d, v in history.items() if v), default=None)
    start = today - timedelta(days=HISTORY_DAYS)
    if first is not None:
        start = max(start, first)
    days = [start + timedelta(days=i) for i in range((today - start).days)]
    flat: tuple[float, ...] = (1.0,) * 7
    if not days:  # no complete day: today so far
        elapsed = max((now - datetime.combine(today, time(), UTC)) / DAY, 1 / 24)
        return RateModel(today, history.get(today, 0) / elapsed, 0.0, flat)
    values = [float(history.get(d, 0)) for d in days]
    xs = [float((d - today).days) for d in days]
    profile = flat
    if len(days) >= PROFILE_MIN_DAYS and sum(values) > 0:
        # the weekday factors from each day's ratio to the trend line, so that a trend does not leak into them
        level, slope = _line(xs, values)
        by_weekday: list[list[float]] = [[] for _ in range(7)]
        for d, x, v in zip(days, xs, values, strict=True):
            expected = level + slope * x
            if expected > 0:
                by_weekday[d.weekday()].append(v / expected)
        raw = [sum(rs) / len(rs) if rs else 1.0 for rs in by_weekday]
        norm = sum(raw) / 7
        profile = tuple(f / norm for f in raw) if norm > 0 else flat
    points = [(x, v / profile[d.weekday()]) for d, x, v in zip(days, xs, values, strict=True)
              if profile[d.weekday()] > 0]
    if not points:
        return RateModel(today, 0.0, 0.0, profile)
    if len(days) < PROFILE_MIN_DAYS or len(points) < 2:
        return RateModel(today, sum(y for _, y in points) / len(points), 0.0, profile)
    level, slope = _line([x for x, _ in points], [y for _, y in points])
    return RateModel(today, level, slope, profile)


def _line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares: (value at x = 0, slope)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def exhaustion(model: RateModel, now: datetime, remaining_nano: int, until: datetime,
               leaving: Callable[[date], float] | None = None) -> datetime | None:
    """When spend at the model's rates uses up `remaining_nano`, before `until` (else None). `leaving(day)`: the
    spend per day that ages out of a rolling window on that day (it frees room)."""
    now = now.astimezone(UTC)
    if remaining_nano <= 0:
        return now
    left = float(remaining_nano)
    at = now
    while at < until:
        day = at.date()
        end = min(datetime.combine(day, time(), UTC) + DAY, until)
        per_day = model.rate(day) - (leaving(day) if leaving is not None else 0.0)
        span = (end - at) / DAY
        if per_day > 0 and per_day * span >= left:
            return at + DAY * (left / per_day)
        left -= per_day * span
        at = end
    return None


def forecast(history: Mapping[date, int], now: datetime, remaining_nano: int, until: datetime,
             leaving: Callable[[date], float] | None = None) -> Forecast:
    model = fit(history, now)
    rate = model.rate(now.astimezone(UTC).date())
    return Forecast(round(rate), exhaustion(model, now, remaining_nano, until, leaving))
