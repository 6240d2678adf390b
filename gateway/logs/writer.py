"""The log writer: rows are queued after the response completed and written in batches by one task.

A write the database refuses because it is unreachable is kept and retried with backoff (up to the queue's
bound: past it rows are dropped and counted). Neither is ever turned into a failed call. `stop` flushes what is
queued, retrying until its deadline. Retention per gateway (`log_retention: {"max_rows", "strategy"}`):
STOP_INSERTING skips rows once the gateway holds max_rows; DELETE_OLDEST deletes the oldest rows past max_rows
after each batch.

One row never costs another its place. Rows carry client-chosen text (paths, model names, metadata, bodies), so
before a batch is written every string loses the characters Postgres refuses (NUL; lone surrogates, which have no
UTF-8 form) and non-finite numbers in jsonb become strings; what was changed is noted in the row's `error`. The
happy path is still one `executemany` per batch. A batch refused for any other reason than the database being
unreachable is split in halves until the rows at fault are alone (a handful of round trips for one bad row among
hundreds); a row refused alone is stored without its client-supplied JSON and bodies, then as a bare row (ids,
time, status), with a note in `error` saying what was dropped and why. Only a row even that fails for is dropped
and counted (`dropped`), with a process log line that names its request id and the error class, never its data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB

from gateway.db import Database, unavailable
from gateway.logs.schema import COLUMNS, request_logs

log = logging.getLogger("spendgate.logs")

# A batch is one statement (a column array per parameter), so the statement-level trigger that keeps the
# analytics rollups (migration 0025) sums the batch at once. jsonb values go as text: an array parameter would
# read a JSON list as a dimension of the array.
_JSONB = frozenset(c.name for c in request_logs.columns if isinstance(c.type, JSONB))
_DIALECT: Any = postgresql.dialect()  # type: ignore[no-untyped-call]
_TYPES = {c.name: "text" if c.name in _JSONB else c.type.compile(dialect=_DIALECT) for c in request_logs.columns}
_ARRAYS = ", ".join(f"${i + 1}::{_TYPES[c]}[]" for i, c in enumerate(COLUMNS))
INSERT = (f"INSERT INTO request_logs ({', '.join(COLUMNS)}) "
          f"SELECT {', '.join(f'{c}::jsonb' if c in _JSONB else c for c in COLUMNS)} "
          f"FROM unnest({_ARRAYS}) AS u({', '.join(COLUMNS)}) ON CONFLICT (id) DO NOTHING")


def _json_text(value: Any) -> str | None:
    """A jsonb value as the pool's codec would send it (gateway/db.py)."""
    return None if value is None else json.dumps(value, separators=(",", ":"), default=str)

Item = tuple[dict[str, Any], dict[str, Any] | None]  # (row, the gateway's log_retention)

JSON_COLUMNS = ("metadata", "identity")
TEXT_COLUMNS = tuple(c.name for c in request_logs.columns
                     if c.name in COLUMNS and c.name not in JSON_COLUMNS and c.type.python_type is str)
# What a row refused alone loses first: what clients chose (their JSON and bodies) ...
CLIENT_COLUMNS = ("metadata", "identity", "request_body", "response_body")
# ... and then everything but what identifies it and what the table requires (read from the schema, so that a
# NOT NULL column added later is kept too: a NULL there would make the bare row fail as well).
REQUIRED_COLUMNS = tuple(c.name for c in request_logs.columns if c.name in COLUMNS and not c.nullable)
BOOLEAN_COLUMNS = frozenset(c.name for c in request_logs.columns if isinstance(c.type, sa.Boolean))
NOTE = "[log writer]"
REPLACEMENT = "\ufffd"

_REPLACED = "NUL or lone surrogate characters replaced by U+FFFD (Postgres cannot store them)"
_NON_FINITE = "non-finite numbers stored as strings (JSON has no NaN or Infinity)"
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")  # Postgres text and jsonb refuse NUL; UTF-8 has no lone surrogate
_MAX_DEPTH = 32  # jsonb values deeper than this are left as they are (the database decides; see `_isolate`)


def clean_text(text: str) -> str:
    """`text` without NUL and lone surrogates (each replaced by U+FFFD, so that the row shows where they were)."""
    if "\x00" in text:
        return _UNSTORABLE.sub(REPLACEMENT, text)
    if text.isascii():  # O(1) in CPython
        return text
    try:  # a C-speed scan for lone surrogates, far faster than the regex on long bodies
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _UNSTORABLE.sub(REPLACEMENT, text)
    return text


def _plainly_storable(value: Any) -> bool:
    """The common jsonb value, recognised fast: an object of ASCII strings without NUL, integers, booleans,
    nulls, finite floats and lists of such strings (identity groups). Anything else takes the full walk."""
    if value.__class__ is not dict:
        return False
    for key, item in value.items():
        if key.__class__ is not str or "\x00" in key or not key.isascii():
            return False
        kind = item.__class__
        if kind is str:
            if "\x00" in item or not item.isascii():
                return False
        elif kind is list:
            for element in item:
                if element.__class__ is not str or "\x00" in element or not element.isascii():
                    return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif item is not None and kind is not int and kind is not bool:
            return False
    return True


def _clean_json(value: Any, found: set[str], depth: int = 0) -> Any:
    """A copy of a jsonb value that Postgres accepts, built only where something changes; `found` collects what."""
    if isinstance(value, str):
        cleaned = clean_text(value)
        if cleaned is not value:
            found.add(_REPLACED)
        return cleaned
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        found.add(_NON_FINITE)
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        out = {(_clean_json(k, found, depth + 1) if isinstance(k, str) else k): _clean_json(v, found, depth + 1)
               for k, v in value.items()}
        return value if _unchanged(out, value) else out
    if isinstance(value, list | tuple):
        items = [_clean_json(v, found, depth + 1) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _unchanged(out: dict[Any, Any], value: dict[Any, Any]) -> bool:
    if len(out) != len(value):
        return False
    return all(k1 is k2 and v1 is v2 for (k1, v1), (k2, v2) in zip(out.items(), value.items(), strict=True))


def _with_note(error: Any, note: str) -> str:
    # cleaned again: a database message quoted in the note may quote the refused characters
    return clean_text(f"{error} {NOTE} {note}" if error else f"{NOTE} {note}")


def clean_row(row: dict[str, Any]) -> dict[str, Any]:
    """The row with every string Postgres would refuse made storable; a copy, with a note in `error`, when
    anything changed. Cheap on clean rows: ASCII strings are checked with a memchr, nothing is copied."""
    notes: list[str] = []
    changed: dict[str, Any] = {}
    for column in TEXT_COLUMNS:
        text = row.get(column)
        # inline test first: most values are ASCII without NUL, and this loop runs for every column of every row
        if text.__class__ is str and ("\x00" in text or not text.isascii()):
            cleaned = clean_text(text)
            if cleaned is not text:
                changed[column] = cleaned
                if column != "error":  # the error column is where the notes go; its own repair goes unsaid
                    notes.append(f"{column}: {_REPLACED}")
    for column in JSON_COLUMNS:
        value = row.get(column)
        if value is None or _plainly_storable(value):
            continue
        found: set[str] = set()
        cleaned_json = _clean_json(value, found)
        if cleaned_json is not value:
            changed[column] = cleaned_json
            notes.append(f"{column}: {', '.join(sorted(found))}")
    if not changed:
        return row
    out = {**row, **changed}
    if notes:
        out["error"] = _with_note(out.get("error"), "; ".join(notes))
    return out


def _reason(exc: BaseException) -> str:
    """Why the database refused a row, without the row's data (asyncpg quotes the refused value: not kept)."""
    text = f"{type(exc).__name__}"
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str):
        text += f" (SQLSTATE {sqlstate})"
    message = str(exc).split("\n", 1)[0]
    argument = re.match(r"invalid input for query argument \$(\d+)", message)
    if argument is not None and 1 <= int(argument.group(1)) <= len(COLUMNS):
        text += f": invalid value for {COLUMNS[int(argument.group(1)) - 1]}"
        detail = re.search(r"\(([^()]*)\)$", message)  # asyncpg's reason, after the value it quotes
        if detail is not None:
            text += f" ({detail.group(1)[:120]})"
    elif message:
        text += f": {message[:160]}"
    return text


def _fallbacks(row: dict[str, Any], exc: BaseException) -> list[tuple[str, dict[str, Any]]]:
    """What a row refused alone may still be stored as, in order: (what was dropped, the row)."""
    reason = _reason(exc)
    without_client = {**row, **{c: None for c in CLIENT_COLUMNS}, "metadata": {}}  # metadata is NOT NULL
    without_client["error"] = _with_note(row.get("error"), f"metadata, identity and bodies dropped: the row was "
                                                           f"refused ({reason})")
    bare: dict[str, Any] = {c: None for c in COLUMNS}
    bare.update({c: bool(row.get(c)) if c in BOOLEAN_COLUMNS else row.get(c) for c in REQUIRED_COLUMNS})
    bare["metadata"] = {}
    step, status = row.get("step"), row.get("status_code")
    bare["step"] = step if isinstance(step, int) and 0 <= step < 2**31 else 0
    bare["status_code"] = status if isinstance(status, int) and 100 <= status <= 999 else None
    bare["error"] = _with_note(None, f"only ids, time and status kept: the row was refused ({reason})")
    return [("its metadata, identity and bodies", without_client), ("all but its ids, time and status", bare)]


class LogWriter:
    def __init__(self, db: Database, *, batch: int = 500, interval: float = 0.2, max_queue: int = 50_000) -> None:
        self.db = db
        self.batch = batch
        self.interval = interval
        self.queue: asyncio.Queue[Item] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0

    def submit(self, row: dict[str, Any], retention: dict[str, Any] | None) -> None:
        try:
            self.queue.put_nowait((row, retention))
        except asyncio.QueueFull:
            self.dropped += 1
            log.error("request log queue full: a log row was dropped", extra={"request_id": str(row.get("id"))})

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="spendgate-log-writer")

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    async def stop(self, deadline_s: float = 10.0) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        end = time.monotonic() + deadline_s
        while not await self.flush():
            if time.monotonic() >= end:
                break
            await asyncio.sleep(0.2)
        if not self.queue.empty():
            log.error("%d request log rows could not be written before shutdown", self.queue.qsize())

    async def _run(self) -> None:
        backoff = self.interval
        while True:
            item = await self.queue.get()
            self.queue.put_nowait(item)
            await asyncio.sleep(backoff)
            backoff = self.interval if await self.flush() else min(backoff * 2, 5.0)

    async def flush(self) -> bool:
        """Write what is queued. False when the database was unreachable (the rows are queued again)."""
        while not self.queue.empty():
            items: list[Item] = []
            while not self.queue.empty() and len(items) < self.batch:
                row, retention = self.queue.get_nowait()
                try:
                    row = clean_row(row)
                except Exception:  # a value of a shape nobody expected: the database decides, `_isolate` copes
                    log.exception("cleaning a request log row failed", extra={"request_id": str(row.get("id"))})
                items.append((row, retention))
            try:
                await self._write(items)
                continue
            except asyncio.CancelledError:
                # stop() cancels us and flushes again: the batch goes back (rows written already are skipped
                # by ON CONFLICT (id))
                self._requeue(items)
                raise
            except Exception as exc:
                if unavailable(exc):
                    log.warning("database unavailable: %d request log rows wait for it", len(items))
                    self._requeue(items)
                    return False
                failure = exc
            log.warning("a batch of %d request log rows was refused (%s); finding the rows at fault",
                        len(items), type(failure).__name__)
            try:
                waiting = await self._isolate(items, failure)
            except asyncio.CancelledError:
                self._requeue(items)
                raise
            if waiting:
                log.warning("database unavailable: %d request log rows wait for it", len(waiting))
                self._requeue(waiting)
                return False
        return True

    def _requeue(self, items: list[Item]) -> None:
        for row, retention in items:
            self.submit(row, retention)

    async def _isolate(self, items: list[Item], failure: BaseException) -> list[Item]:
        """Write a refused batch in halves, down to single rows (then `_salvage`). Returns the rows not written
        because the database became unreachable meanwhile (to be queued again)."""
        if len(items) == 1:
            return await self._salvage(items[0], failure)
        half = len(items) // 2
        first, second = items[:half], items[half:]
        for part, rest in ((first, second), (second, [])):
            try:
                await self._write(part)
            except Exception as exc:
                if unavailable(exc):
                    return part + rest
                waiting = await self._isolate(part, exc)
                if waiting:
                    return waiting + rest
        return []

    async def _salvage(self, item: Item, failure: BaseException) -> list[Item]:
        """Store what can be stored of a row the database refused alone; drop and count it if nothing can."""
        row, retention = item
        request_id = str(row.get("id"))
        dropped = "nothing"
        for dropped, fallback in _fallbacks(row, failure):
            try:
                await self._write([(fallback, retention)])
            except Exception as exc:
                if unavailable(exc):
                    return [item]
                failure = exc
                continue
            log.warning("request log row stored without %s: the database refused it (%s)", dropped,
                        type(failure).__name__, extra={"request_id": request_id})
            return []
        self.dropped += 1
        log.error("request log row dropped: the database refused it even with %s removed (%s)", dropped,
                  _reason_class(failure), extra={"request_id": request_id})
        return []

    async def _write(self, items: list[Item]) -> None:
        by_gateway: dict[tuple[str, str], dict[str, Any] | None] = {}
        for row, retention in items:
            by_gateway[(row["account_id"], row["gateway_id"])] = retention
        async with self.db.pool.acquire() as conn, conn.transaction():
            room: dict[tuple[str, str], int] = {}  # STOP_INSERTING: rows the gateway may still take
            for (account, gateway), retention in by_gateway.items():
                if retention and retention.get("strategy") == "STOP_INSERTING":
                    count = await conn.fetchval(
                        "SELECT count(*) FROM request_logs WHERE account_id = $1 AND gateway_id = $2",
                        account, gateway)
                    room[(account, gateway)] = max(0, retention["max_rows"] - count)
            rows = []
            for row, _ in items:
                key = (row["account_id"], row["gateway_id"])
                if key in room:
                    if room[key] == 0:
                        continue
                    room[key] -= 1
                rows.append(row)
            if rows:
                await conn.execute(INSERT, *([_json_text(r[c]) for r in rows] if c in _JSONB else [r[c] for r in rows]
                                             for c in COLUMNS))
            self.written += len(rows)
            for (account, gateway), retention in by_gateway.items():
                if retention and retention.get("strategy") == "DELETE_OLDEST":
                    await conn.execute(
                        """
                        DELETE FROM request_logs WHERE id IN (
                            SELECT id FROM request_logs WHERE account_id = $1 AND gateway_id = $2
                             ORDER BY created_at DESC, id DESC OFFSET $3)
                        """,
                        account, gateway, retention["max_rows"],
                    )


def _reason_class(exc: BaseException) -> str:
    """The error class and SQLSTATE only: a process log line must not carry a row's data."""
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}, SQLSTATE {sqlstate}" if isinstance(sqlstate, str) else type(exc).__name__
