"""Reserve the worst case before the call, settle the actual cost after it — one round trip each.

`Limits.reserve` turns the rules that apply to a request into bucket lines in a fixed order (rule id, key), so
that concurrent reservations lock rows in the same order and cannot deadlock. A refusal names every blocking
bucket that would overflow; the caller decides (429, or the fallback model). `Limits.settle` is safe to call
more than once: only the first call changes anything.

Batching: a reservation without a credit hold, and later its settlement, goes through a `_Batcher`: while
`max_inflight` calls are in flight, new ones wait, and each call that returns sends everything waiting (up to
`max_batch`) as one call of `limits.reserve_many` / `limits.settle_many` (migration 0012): one round trip and
one transaction for all of them, with the semantics of the one-by-one functions applied in order. A hot bucket
(one user, an unscoped rule) is locked until each commit is flushed, so one request per transaction serialises
every request on that flush; batched, one flush serves all that arrived meanwhile. Reservations with a credit
hold (unified billing) stay one by one through `limits.reserve` / `limits.settle`: ledger rows of different
tenants must not be locked in batch order. A request still makes exactly one reserve call and one settle call.
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
from functools import cached_property
from typing import Any

import asyncpg

from gateway.db import Database
from gateway.ledger.ledger import HoldRefusal
from gateway.limits.rules import Rule

log = logging.getLogger("spendgate.limits")


@dataclass(frozen=True)
class BucketLine:
    rule: Rule
    key: str
    window_start: datetime  # fixed: the window; rolling: the slice the spend is recorded in
    rolling_since: datetime | None  # rolling: slices from here on count
    alert_window: datetime  # one alert per bucket, fraction and calendar window

    def as_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {
            "rule_id": self.rule.id,
            "key": self.key,
            "window_start": self.window_start.isoformat(),
            "budget": self.rule.budget_nano,
            "blocking": self.rule.action != "monitor",
            "alert_window": self.alert_window.isoformat(),
        }
        if self.rolling_since is not None:
            line["rolling_since"] = self.rolling_since.isoformat()
        if self.rule.alert_at:
            line["alert_at"] = [str(f) for f in self.rule.alert_at]
        return line

    @cached_property
    def json_text(self) -> str:
        """`as_json` encoded, once: `bucket_lines` hands the same lines to every request of a bucket and window."""
        return json.dumps(self.as_json(), separators=(",", ":"))


@dataclass(frozen=True)
class BucketState:
    line: BucketLine
    spent_nano: int
    pending_nano: int

    @property
    def remaining_nano(self) -> int:
        return self.line.rule.budget_nano - self.spent_nano - self.pending_nano


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

    def remaining_after_nano(self) -> int | None:
        """What the tightest bucket has left after this reservation (None: no bucket matched)."""
        blocking = [s for s in self.states if s.line.rule.action != "monitor"] or self.states
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
    from gateway.limits.windows import Window

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
    from gateway.limits.windows import Window

    return Window(rule.window.name, "fixed").start(now)


@dataclass(frozen=True)
class Item:
    """One reservation or settlement waiting for its batch."""

    id: uuid.UUID
    now: datetime
    encoded: str  # its element of the batch's JSON array
    args: tuple[Any, ...]  # for the one-by-one function, should the batch fail


Answer = dict[str, Any]
RESERVE_ONE = "SELECT limits.reserve($1, $2::text::jsonb, $3, $4, $5, NULL)"
SETTLE_ONE = "SELECT limits.settle($1, $2, $3, $4)"


def _reserve_item(rid: uuid.UUID, lines: list[BucketLine], estimate: int, now: datetime, expires: datetime) -> Item:
    encoded = "[" + ",".join(line.json_text for line in lines) + "]"
    return Item(rid, now, f'{{"id":"{rid}","estimate":{estimate:d},"now":"{now.isoformat()}",'
                          f'"expires_at":"{expires.isoformat()}","lines":{encoded}}}',
                (rid, encoded, estimate, now, expires))


def _settle_item(rid: uuid.UUID, actual: int, outcome: str, now: datetime) -> Item:
    return Item(rid, now, f'{{"id":"{rid}","actual":{actual:d},"outcome":{json.dumps(outcome)},'
                          f'"now":"{now.isoformat()}"}}', (rid, actual, outcome, now))


class _Batcher:
    """Concurrent calls coalesced: at most `max_inflight` SQL calls at a time, each carrying every item that
    waited for it (up to `max_batch`), answers (or an item's own exception) in item order. A caller cancelled
    while its item waits is dropped from the queue; one cancelled after its item was sent gets its answer passed
    to `orphan`."""

    def __init__(self, call: Callable[[list[Item]], Awaitable[list[Answer | Exception]]], *, max_batch: int,
                 max_inflight: int, orphan: Callable[[Item, Answer], None] | None = None) -> None:
        self._call = call
        self.max_batch = max_batch
        self.max_inflight = max_inflight
        self._orphan = orphan
        self._queue: deque[tuple[Item, asyncio.Future[Answer]]] = deque()
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # SQL calls made, for tests and metrics
        self.items = 0

    async def submit(self, item: Item) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._queue and self._inflight < self.max_inflight:
            batch: list[tuple[Item, asyncio.Future[Answer]]] = []
            ids: set[uuid.UUID] = set()
            later: list[tuple[Item, asyncio.Future[Answer]]] = []
            while self._queue and len(batch) < self.max_batch:
                item, future = self._queue.popleft()
                if future.done():
                    continue
                if item.id in ids:
                    # the same id twice in one batch is not "one after the other" (a refused reservation replayed
                    # would be answered as a replay of a grant): it goes in a later batch
                    later.append((item, future))
                    continue
                ids.add(item.id)
                batch.append((item, future))
            self._queue.extendleft(reversed(later))
            if not batch:
                return
            self._inflight += 1
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


def _decoded(result: Any) -> Answer:
    answer: Answer = result if isinstance(result, dict) else json.loads(result)
    return answer


class Limits:
    MAX_BATCH = 64
    MAX_INFLIGHT = 2
    _REMEMBERED = 100_000  # bound on reservations awaiting a batched settlement (a caller that never settles)

    def __init__(self, db: Database, *, max_batch: int = MAX_BATCH, max_inflight: int = MAX_INFLIGHT) -> None:
        self.db = db
        self._reserves = _Batcher(self._reserve_many, max_batch=max_batch, max_inflight=max_inflight,
                                  orphan=self._release_orphan)
        self._settles = _Batcher(self._settle_many, max_batch=max_batch, max_inflight=max_inflight)
        # reservations granted through the batch (no credit hold) whose settlement can be batched too
        self._batched: dict[uuid.UUID, None] = {}
        self._orphans: set[asyncio.Task[Any]] = set()

    async def _reserve_many(self, items: list[Item]) -> list[Answer | Exception]:
        return await self._call_many("SELECT limits.reserve_many($1::text::jsonb)", RESERVE_ONE, items)

    async def _settle_many(self, items: list[Item]) -> list[Answer | Exception]:
        return await self._call_many("SELECT limits.settle_many($1::text::jsonb)", SETTLE_ONE, items)

    async def _call_many(self, sql: str, one: str, items: list[Item]) -> list[Answer | Exception]:
        # the items come encoded: the batch is their JSON array, sent as text and parsed by the server
        try:
            result = await self.db.pool.fetchval(sql, "[" + ",".join(item.encoded for item in items) + "]")
        except asyncpg.PostgresError as exc:
            if len(items) == 1 or isinstance(exc, asyncpg.PostgresConnectionError):
                raise
            # the server refused the whole batch (nothing of it was kept): one bad item must not fail the
            # others, so each goes alone through the one-by-one function, and only its own error is its own
            log.warning("batch of %d refused (%s: %s); retrying one by one", len(items), type(exc).__name__, exc)
            alone: list[Answer | Exception] = []
            for item in items:
                try:
                    alone.append(_decoded(await self.db.pool.fetchval(one, *item.args)))
                except Exception as error:  # that item's own failure, raised to its caller only
                    alone.append(error)
            return alone
        answers: list[Answer | Exception] = result if isinstance(result, list) else json.loads(result)
        return answers

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
        if result.get("ok") and not result.get("replay"):
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
    ) -> Outcome:
        if estimate_nano < 0:
            raise ValueError("estimate must not be negative")
        now = now or datetime.now(UTC)
        rid = reservation_id or uuid.uuid4()
        if hold is None:
            data = await self._reserves.submit(_reserve_item(rid, lines, estimate_nano, now, now + ttl))
            if data.get("ok") and not data.get("replay"):
                self._batched[rid] = None
                if len(self._batched) > self._REMEMBERED:
                    del self._batched[next(iter(self._batched))]  # its settlement goes one by one
        else:
            hold_json = {"hold_id": str(rid), "tenant": hold.tenant, "amount": hold.amount_nano,
                         "request_id": hold.request_id}
            result = await self.db.pool.fetchval(
                "SELECT limits.reserve($1, $2, $3, $4, $5, $6)",
                rid, [line.as_json() for line in lines], estimate_nano, now, now + ttl, hold_json,
            )
            data = result if isinstance(result, dict) else json.loads(result)
        states = [BucketState(line, int(s["spent"]), int(s["pending"]))
                  for line, s in zip(lines, data.get("state", []), strict=False)]
        exceeded = [states[i] for i in data.get("exceeded", [])]
        credit = data.get("credit")
        return Outcome(rid, bool(data["ok"]), states, exceeded, None if credit is None else HoldRefusal.of(credit),
                       estimate_nano)

    async def settle(self, reservation_id: uuid.UUID, actual_nano: int, *, outcome: str = "settled",
                     now: datetime | None = None) -> dict[str, Any]:
        now = now or datetime.now(UTC)
        if reservation_id in self._batched:  # reserved here through the batch: no credit hold
            del self._batched[reservation_id]
            return await self._settles.submit(_settle_item(reservation_id, actual_nano, outcome, now))
        result = await self.db.pool.fetchval(
            "SELECT limits.settle($1, $2, $3, $4)", reservation_id, actual_nano, outcome, now
        )
        answer: dict[str, Any] = result if isinstance(result, dict) else json.loads(result)
        return answer

    async def expire_overdue(self, *, now: datetime | None = None, limit: int = 500) -> int:
        """Release reservations whose instance never settled them (it died): pending goes back, nothing is spent."""
        now = now or datetime.now(UTC)
        ids = await self.db.pool.fetch(
            "SELECT id FROM limits.reservations WHERE settled_at IS NULL AND expires_at < $1 "
            "ORDER BY expires_at LIMIT $2",
            now, limit,
        )
        expired = 0
        for row in ids:
            result = await self.settle(row["id"], 0, outcome="expired", now=now)
            expired += bool(result.get("ok"))
        return expired
