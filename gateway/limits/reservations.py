"""Reserve the worst case before the call, settle the actual cost after it — one round trip each.

`Limits.reserve` turns the rules that apply to a request into bucket lines in a fixed order (rule id, key). A
refusal names every blocking bucket that would overflow; the caller decides (429, or the fallback model).
`Limits.settle` is safe to call more than once: only the first call changes anything.

One SQL path (migrations 0017, 0019): `limits.reserve(limits.bucket_line[], limits.reservation_request[])` and
`limits.settle(limits.settlement_request[])` take a batch of typed requests and answer one row per request, with
the semantics of the requests applied one after the other in one transaction; the bucket rows of the whole batch
and the ledger rows of its credit holds are locked once, in one global order (open holds, credits accounts, usage
shards, then buckets), so no mix of batches can deadlock. A single request is a batch of one. The lines go once per
batch (`reservation_args`): a hot bucket's requests share them.

Rate limits (gateway/limits/rate_rules.py, migration 0024) are lines of the same call: a line's `unit` says what it
counts: None, money (the request's estimate, settled to its actual cost); `requests` (1, settled to 1); `tokens`
(the request's token bound, settled to the tokens it used). So a request's rate limits, spend limits and credit
hold are granted together or not at all.

Batching: every reservation, with or without a unified-billing credit hold, and later its settlement, goes through
a `_Batcher`: while a call is in flight, new ones wait, and each call that returns sends everything waiting (up to
`max_batch`) as one call: one round trip and one commit for all of them. One in flight rather than two: a second
batch of the same hot rows would only wait for the first one's locks, and the requests it took would have made the
next batch larger (bench/ledger.py --max-inflight: 3.35x against 2.77x the server's single-row commit rate). But a
call stalled on a lock must not hold every other tenant back: after `stall_after` another call goes (up to
`max_inflight`). A hot bucket (one user, an
unscoped rule) or a hot tenant's credits row is locked until each commit is flushed, so one request per transaction
serialises every request on that flush; batched, one flush serves all that arrived meanwhile. A request still makes
exactly one reserve call and one settle call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cached_property
from typing import Any, TypeAlias

import asyncpg

from gateway.db import Database
from gateway.ledger.ledger import HoldRefusal
from gateway.limits.rate_rules import RateRule
from gateway.limits.rules import Rule

log = logging.getLogger("spendgate.limits")


@dataclass(frozen=True)
class BucketLine:
    rule: Rule | RateRule
    key: str
    window_start: datetime  # fixed: the window; rolling: the slice the spend is recorded in
    rolling_since: datetime | None  # rolling: slices from here on count
    alert_window: datetime  # one alert per bucket, fraction and calendar window
    unit: str | None = None  # None: money (the estimate, nano-USD); a rate limit's "requests" or "tokens"

    @property
    def budget(self) -> int:
        """The bucket's limit, in the line's unit."""
        return self.rule.limit if isinstance(self.rule, RateRule) else self.rule.budget_nano

    @cached_property
    def row(self) -> tuple[Any, ...]:
        """The line as a `limits.bucket_line`, built once: `bucket_lines` hands the same lines to every request of a
        bucket and window."""
        return (uuid.UUID(self.rule.id), self.key, self.window_start, self.rolling_since, self.budget,
                self.rule.action != "monitor", self.alert_window,
                [Decimal(f) for f in self.rule.alert_at] if self.rule.alert_at else None, self.unit)


@dataclass(frozen=True)
class BucketState:
    line: BucketLine
    spent_nano: int
    pending_nano: int

    @property
    def remaining_nano(self) -> int:
        """What the bucket has left, in the line's unit (nano-USD for spend lines)."""
        return self.line.budget - self.spent_nano - self.pending_nano


@dataclass(frozen=True)
class HoldRequest:
    """A unified-billing credit hold placed in the same transaction as the bucket reservations."""

    tenant: str
    amount_nano: int
    request_id: str | None = None


@dataclass
class Outcome:
    reservation_id: uuid.UUID
    ok: bool
    states: list[BucketState] = field(default_factory=list)  # before this reservation
    exceeded: list[BucketState] = field(default_factory=list)
    credit_refusal: HoldRefusal | None = None  # the credit hold was refused (and nothing was reserved)
    estimate_nano: int = 0
    tokens: int = 0  # the token bound reserved in rate limits counting tokens

    def remaining_after_nano(self) -> int | None:
        """What the tightest spend bucket has left after this reservation (None: no spend bucket matched)."""
        spend = [s for s in self.states if s.line.unit is None]
        blocking = [s for s in spend if s.line.rule.action != "monitor"] or spend
        if not blocking:
            return None
        return min(s.remaining_nano for s in blocking) - (self.estimate_nano if self.ok else 0)


# bucket_lines per (rules, the request's values of their dimensions): the lines, and the span of time in which
# they stay the same (every window and rolling slice of those rules unchanged). Bounded, oldest out first.
_LinesEntry = tuple[tuple[Rule, ...], datetime, datetime, list[BucketLine]]
_LINES: dict[tuple[Any, ...], _LinesEntry] = {}
_DIMENSIONS: dict[tuple[int, ...], tuple[tuple[Rule, ...], tuple[str, ...]]] = {}
_CACHE_SIZE = 4096


def bucket_lines(rules: list[Rule], attributes: dict[str, Any], now: datetime) -> list[BucketLine]:
    """The lines of a request, in lock order. Cached: one hot user's requests all get the same (frozen) lines."""
    if now.tzinfo is None:
        return _bucket_lines(rules, attributes, now)  # refused there
    ids = tuple(map(id, rules))
    dims = _DIMENSIONS.get(ids)
    if dims is None:
        # entries keep their rules alive, so that the ids in their keys cannot be reused by other objects
        names = tuple(sorted({d.name for r in rules for d in r.dimensions}))
        dims = _remember(_DIMENSIONS, ids, (tuple(rules), names))
    key = (ids, tuple(_hashable(attributes.get(name)) for name in dims[1]))
    try:
        hit = _LINES.get(key)
    except TypeError:  # an attribute value that cannot be a key: no caching
        return _bucket_lines(rules, attributes, now)
    if hit is not None and hit[1] <= now < hit[2]:
        return list(hit[3])
    lines = _bucket_lines(rules, attributes, now)
    valid_from, valid_until = _unchanged_span(rules, now)
    _remember(_LINES, key, (tuple(rules), valid_from, valid_until, lines))
    return list(lines)


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> Any:
    if len(cache) >= _CACHE_SIZE:
        del cache[next(iter(cache))]
    cache[key] = value
    return value


def _hashable(value: Any) -> Any:
    """A cache key part for an attribute value: typed (True, 1 and 1.0 make different bucket keys)."""
    if isinstance(value, float):  # 0.0 == -0.0, but json (the bucket key) tells them apart
        return (float, repr(value))
    if isinstance(value, list | tuple):
        return (list, tuple(_hashable(v) for v in value))
    if isinstance(value, dict):
        return (dict, json.dumps(value, sort_keys=True, default=str))
    return (type(value), value)


def _unchanged_span(rules: list[Rule], now: datetime) -> tuple[datetime, datetime]:
    """[from, until) around `now` in which no window (fixed), slice or calendar window (rolling, for alerts) of
    these rules starts or ends, so that their lines stay the same."""
    from gateway.windows import Window

    valid_from, valid_until = now, now + timedelta(days=1)  # no rule: no line, whenever
    windows = [w for r in rules for w in (r.window, Window(r.window.name, "fixed"))]
    if windows:
        valid_from = max(w.start(now) for w in windows)
        valid_until = min(w.end(now) for w in windows)
    return valid_from, valid_until


def _bucket_lines(rules: list[Rule], attributes: dict[str, Any], now: datetime) -> list[BucketLine]:
    lines = []
    for rule in rules:
        window = rule.window
        alert_window = window.start(now) if window.type == "fixed" else _calendar_start(rule, now)
        since = window.counted_since(now) if window.type == "rolling" else None
        for key in rule.bucket_keys(attributes):
            lines.append(BucketLine(rule, key, window.start(now), since, alert_window))
    return sorted(lines, key=lambda line: (line.rule.id, line.key))


def _calendar_start(rule: Rule, now: datetime) -> datetime:
    from gateway.windows import Window

    return Window(rule.window.name, "fixed").start(now)


@dataclass(frozen=True)
class Item:
    """One reservation or settlement waiting for its batch: `row` is its `limits.settlement_request`, or its
    `limits.reservation_request` without its lines, which `lines` are (the batch names them by position)."""

    id: uuid.UUID
    now: datetime
    row: tuple[Any, ...]
    lines: list[BucketLine] | None = None


Answer: TypeAlias = asyncpg.Record  # a `limits.reservation_answer` or `limits.settlement_answer`
RESERVE = "SELECT * FROM limits.reserve($1, $2)"
SETTLE = "SELECT * FROM limits.settle($1)"


def _reserve_item(rid: uuid.UUID, lines: list[BucketLine], estimate: int, now: datetime, expires: datetime,
                  hold: HoldRequest | None = None, tokens: int = 0) -> Item:
    credit = None if hold is None else (hold.tenant, hold.amount_nano, hold.request_id)
    return Item(rid, now, (rid, estimate, now, expires, credit, tokens), lines)


def _settle_item(rid: uuid.UUID, actual: int, outcome: str, now: datetime, tokens: int | None = None) -> Item:
    return Item(rid, now, (rid, actual, outcome, now, tokens))


def reservation_args(items: list[Item]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """`limits.reserve`'s arguments: every distinct line once (the requests of a hot bucket share the same
    `BucketLine` objects: `bucket_lines` caches them), and each request with the positions of its lines."""
    positions: dict[int, int] = {}
    lines: list[tuple[Any, ...]] = []
    requests: list[tuple[Any, ...]] = []
    for item in items:
        named = []
        for line in item.lines or ():
            position = positions.get(id(line))
            if position is None:
                lines.append(line.row)
                position = positions[id(line)] = len(lines)
            named.append(position)
        rid, estimate, now, expires, credit, tokens = item.row
        requests.append((rid, estimate, now, expires, named, credit, tokens))
    return lines, requests


def settlement_args(items: list[Item]) -> tuple[list[tuple[Any, ...]]]:
    return ([item.row for item in items],)


@dataclass(frozen=True)
class Settled:
    """What a settlement did: `ok` when this call resolved the reservation (`late`: after the sweeper had expired
    it, the cost still recorded), else the `reason` ('already settled', 'unknown reservation'); `alerts` is how many
    alert rows it recorded, `hold` what the ledger answered for its credit hold."""

    ok: bool
    reason: str | None = None
    late: bool = False
    alerts: int = 0
    hold: dict[str, Any] | None = None

    @classmethod
    def of(cls, row: Answer) -> Settled:
        return cls(row["ok"], row["reason"], row["late"], row["alerts"], row["hold"])


class _Batcher:
    """Concurrent calls coalesced: one SQL call at a time, each carrying every item that waited for it (up to
    `max_batch`), answers (or an item's own exception) in item order. A caller cancelled while its item waits is
    dropped from the queue; one cancelled after its item was sent gets its answer passed to `orphan`.

    A call that takes longer than `stall_after` seconds (waiting for a row lock another transaction holds: an
    operator's change to the tenant's spending limit, a top-up, another instance's batch; or retrying a refused
    batch one item at a time) no longer holds everything that arrives after it: another call goes, and another
    after each `stall_after` it still runs, up to `max_inflight` in flight. Unrelated tenants then pass a stalled
    one. `stall_after=0`: up to `max_inflight` at once, without waiting."""

    def __init__(self, call: Callable[[list[Item]], Awaitable[list[Answer | Exception]]], *, max_batch: int,
                 max_inflight: int, stall_after: float = 0.0,
                 orphan: Callable[[Item, Answer], None] | None = None) -> None:
        self._call = call
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self.stall_after = stall_after
        self._orphan = orphan
        self._queue: deque[tuple[Item, asyncio.Future[Answer]]] = deque()
        self._inflight = 0
        self._newest_sent = 0.0  # loop time the newest call in flight was sent
        self._wake: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # SQL calls made, for tests and metrics
        self.items = 0

    async def submit(self, item: Item) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._dispatch()
        return await future

    def _stalled(self) -> bool:
        """Whether another call may go while others are in flight; if not yet, look again when it may."""
        if not self._inflight or not self.stall_after:
            return True
        loop = asyncio.get_running_loop()
        waited = loop.time() - self._newest_sent
        if waited >= self.stall_after:
            return True
        if self._wake is None:
            self._wake = loop.call_later(self.stall_after - waited, self._woken)
        return False

    def _woken(self) -> None:
        self._wake = None
        self._dispatch()

    def _dispatch(self) -> None:
        while self._queue and self._inflight < self.max_inflight and self._stalled():
            batch: list[tuple[Item, asyncio.Future[Answer]]] = []
            ids: set[uuid.UUID] = set()
            later: list[tuple[Item, asyncio.Future[Answer]]] = []
            while self._queue and len(batch) < self.max_batch:
                item, future = self._queue.popleft()
                if future.done():
                    continue
                if item.id in ids:
                    # the SQL functions refuse an id twice in one batch (a refused reservation replayed in it would
                    # read as a replay of a grant): it goes in a later batch, as one after the other
                    later.append((item, future))
                    continue
                ids.add(item.id)
                batch.append((item, future))
            self._queue.extendleft(reversed(later))
            if not batch:
                return
            self._inflight += 1
            self._newest_sent = asyncio.get_running_loop().time()
            task = asyncio.create_task(self._run(batch), name="spendgate-limits-batch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Answer]]]) -> None:
        try:
            self.calls += 1
            self.items += len(batch)
            results = await self._call([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} answers for {len(batch)} items")
        except BaseException as exc:
            for _, future in batch:
                if future.done():
                    continue
                if isinstance(exc, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (item, future), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    if not future.done():
                        future.set_exception(result)
                elif not future.done():
                    future.set_result(result)
                elif self._orphan is not None:
                    self._orphan(item, result)
        finally:
            self._inflight -= 1
            self._dispatch()


class Limits:
    MAX_BATCH = 64
    MAX_INFLIGHT = 4
    STALL_AFTER = 0.05  # seconds; a batch takes ~6 ms at 32 concurrent requests on the development machine

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH, max_inflight: int = MAX_INFLIGHT,
                 stall_after: float = STALL_AFTER) -> None:
        self.db = db
        self.max_batch = max_batch
        self._reserves = _Batcher(self._reserve_batch, max_batch=max_batch, max_inflight=max_inflight,
                                  stall_after=stall_after, orphan=self._release_orphan)
        self._settles = _Batcher(self._settle_batch, max_batch=max_batch, max_inflight=max_inflight,
                                 stall_after=stall_after)
        self._orphans: set[asyncio.Task[Any]] = set()

    async def _reserve_batch(self, items: list[Item]) -> list[Answer | Exception]:
        return await self._call(RESERVE, items)

    async def _settle_batch(self, items: list[Item]) -> list[Answer | Exception]:
        return await self._call(SETTLE, items)

    async def _call(self, sql: str, items: list[Item]) -> list[Answer | Exception]:
        args = reservation_args if sql == RESERVE else settlement_args
        try:
            rows = await self.db.pool.fetch(sql, *args(items))
        except asyncpg.PostgresError as exc:
            if len(items) == 1 or isinstance(exc, asyncpg.PostgresConnectionError):
                raise
            # the server refused the whole batch (nothing of it was kept): one bad item must not fail the
            # others, so each goes again as a batch of one, and only its own error is its own
            log.warning("batch of %d refused (%s: %s); retrying one by one", len(items), type(exc).__name__, exc)
            alone: list[Answer | Exception] = []
            for item in items:
                try:
                    alone.append((await self.db.pool.fetch(sql, *args([item])))[0])
                except Exception as error:  # that item's own failure, raised to its caller only
                    alone.append(error)
            return alone
        if [row["id"] for row in rows] != [item.id for item in items]:
            raise RuntimeError(f"{len(rows)} answers for {len(items)} items, or not in their order")
        return list(rows)

    async def drain(self, deadline_s: float = 5.0) -> None:
        """Shutdown: wait for the batches in flight and the orphan releases, so that none of them meets a closed
        pool (what is still queued is sent by the batches that finish)."""
        end = asyncio.get_running_loop().time() + deadline_s
        while True:  # an orphan release starts a settlement batch: look again until nothing is left
            pending = {*self._reserves._tasks, *self._settles._tasks, *self._orphans}
            left = end - asyncio.get_running_loop().time()
            if not pending or left <= 0:
                return
            await asyncio.wait(pending, timeout=left)

    def _release_orphan(self, item: Item, result: Answer) -> None:
        """A reservation granted to a caller that was cancelled meanwhile: nothing was called, release it."""
        if result["ok"] and not result["replay"]:
            task = asyncio.create_task(self.settle(item.id, 0, now=item.now))
            self._orphans.add(task)
            task.add_done_callback(self._orphans.discard)

    async def reserve(
        self,
        lines: list[BucketLine],
        estimate_nano: int,
        *,
        hold: HoldRequest | None = None,
        now: datetime | None = None,
        ttl: timedelta = timedelta(minutes=15),
        reservation_id: uuid.UUID | None = None,
        tokens: int = 0,
    ) -> Outcome:
        """`tokens`: the request's token bound, reserved in the lines of rate limits counting tokens (a line
        counting requests takes 1, a spend line the estimate)."""
        if estimate_nano < 0 or tokens < 0:
            raise ValueError("estimate and tokens must not be negative")
        now = now or datetime.now(UTC)
        rid = reservation_id or uuid.uuid4()
        item = _reserve_item(rid, lines, estimate_nano, now, now + ttl, hold, tokens)
        answer = await self._reserves.submit(item)
        states = [BucketState(line, s["spent"], s["pending"])
                  for line, s in zip(lines, answer["state"] or (), strict=False)]
        exceeded = [states[i - 1] for i in answer["exceeded"] or ()]
        credit = answer["credit"]
        return Outcome(rid, answer["ok"], states, exceeded, None if credit is None else HoldRefusal.of(credit),
                       estimate_nano, tokens)

    async def settle(self, reservation_id: uuid.UUID, actual_nano: int, *, outcome: str = "settled",
                     now: datetime | None = None, tokens: int | None = None) -> Settled:
        """`outcome`: 'settled' (the call ended), or 'expired' (the sweeper). `tokens`: the tokens the call used,
        for rate limits counting tokens (None: what was reserved). Rate limits count nothing for an expired one."""
        item = _settle_item(reservation_id, actual_nano, outcome, now or datetime.now(UTC), tokens)
        return Settled.of(await self._settles.submit(item))

    async def expire_overdue(self, *, now: datetime | None = None, limit: int = 500) -> int:
        """Release reservations whose instance never settled them (it died): pending goes back, nothing is spent,
        the credit hold is expired. In batches."""
        now = now or datetime.now(UTC)
        rows = await self.db.pool.fetch(
            "SELECT id FROM limits.reservations WHERE settled_at IS NULL AND expires_at < $1 ORDER BY expires_at "
            "LIMIT $2",
            now, limit,
        )
        items = [_settle_item(r["id"], 0, "expired", now) for r in rows]
        batches = [items[i:i + self.max_batch] for i in range(0, len(items), self.max_batch)]
        expired = 0
        for batch in batches:
            for answer in await self._call(SETTLE, batch):
                if isinstance(answer, Exception):
                    log.error("expiring a reservation failed", exc_info=answer)
                else:
                    expired += answer["ok"]
        return expired
