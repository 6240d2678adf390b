"""`spendgate serve` and `spendgate migrate`: the process around the app.

Start-up, in this order: check the port can be bound (a port in use ends the command before anything starts);
the database (the embedded one when `DATABASE_URL` is unset); migrations; the admin token (generated and shown
once, framed, on the very first start; one line saying it is stored on later ones); uvicorn. Only once the
listening socket accepts connections (migrations done, app started) does the console get the one line that
says so: `spendgate ready on http://HOST:PORT (database: ...)`.

Shutdown: SIGTERM or SIGINT lets uvicorn finish in-flight requests (`SPENDGATE_SHUTDOWN_TIMEOUT_S`), then the
app settles and flushes (`Services.stop`), then this process releases its handle on the embedded database, which
stops the server when no other running process holds it. Python's default for SIGTERM ends a process without
running `finally` blocks or atexit hooks, and uvicorn re-raises the signal it caught once it is done: so while
serving, both signals are turned into an exception (`Stopped`) that unwinds through the release; the process
then ends by that same signal, as uvicorn alone would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from gateway.settings import Settings

if TYPE_CHECKING:
    from starlette.applications import Starlette

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived (BaseException: no `except Exception` on the way may swallow it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM raise `Stopped` in the main thread. Inside `held()` a signal is kept until
    the block ends (starting or stopping the embedded server must not be cut in the middle). On leaving with
    `Stopped`, the previous handlers are restored and the process ends by that signal."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._holding = 0
        self._pending: int | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._holding:
            self._pending = self._pending or signum
            return
        raise Stopped(signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
        if not self._holding and self._pending is not None:
            signum, self._pending = self._pending, None
            raise Stopped(signum)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if isinstance(exc, Stopped):
            # the conventional end of a process stopped by a signal: its parent sees "killed by SIGTERM/SIGINT"
            sys.stderr.flush()
            signal.signal(exc.signum, signal.SIG_DFL)
            signal.raise_signal(exc.signum)


@contextlib.contextmanager
def database(settings: Settings, signals: StopSignals) -> Iterator[tuple[str, str]]:
    """(URL, description for the console). The embedded server is started when DATABASE_URL is unset, and this
    process's handle on it is released on the way out, whatever the way out is."""
    if settings.database_url:
        from gateway.db import describe_database

        yield settings.database_url, describe_database(settings.database_url)
        return
    from gateway.db import embedded_pgdata, embedded_server, release_embedded

    with signals.held():
        server = embedded_server(settings.data_dir)
    try:
        yield str(server.get_uri()), f"embedded at {embedded_pgdata(settings.data_dir)}"
    finally:
        with signals.held():
            release_embedded(server)


# the server answered, but this URL cannot log in: no such database, no such role, a wrong password
_REFUSED_LOGIN = {"3D000", "28000", "28P01"}


def _refused_login(exc: BaseException) -> BaseException | None:
    """The server's own refusal inside `exc` (Alembic's SQLAlchemy wraps asyncpg's), if it is one of those."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        if getattr(seen, "sqlstate", None) in _REFUSED_LOGIN:
            return seen
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def unreachable(exc: Exception, described: str) -> bool:
    """Say so in one line (not a traceback) when the database cannot be reached at start, or refuses the login."""
    from gateway.db import unavailable

    refused = _refused_login(exc)
    if refused is not None:
        print(f"spendgate: the database refused the connection ({described}): {refused} (create the database or "
              "the role first, e.g. `createdb`; migrate creates tables, not databases)", file=sys.stderr, flush=True)
        return True
    if not unavailable(exc):
        return False
    print(f"spendgate: cannot reach the database ({described}): {type(exc).__name__}: {exc}", file=sys.stderr,
          flush=True)
    return True


class _Upgrades(logging.Handler):
    """Counts the revisions Alembic applies, instead of letting its per-revision lines reach the console."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Running upgrade "):
            self.applied.append(message.removeprefix("Running upgrade ").split(",", 1)[0])


def apply_migrations(url: str) -> str:
    """Migrate, and say what happened in one line: `migrations: applied 3 (0014_… -> 0016_…)` or `up to date`.
    Alembic's own INFO lines (one per revision, several lines each, then two more at every later start) are
    quieted for the rest of the process; its warnings and errors still reach the log."""
    from gateway.db import migrate as apply

    quiet = logging.getLogger("alembic")
    runtime = logging.getLogger("alembic.runtime.migration")
    counter = _Upgrades()
    runtime.addHandler(counter)
    runtime.setLevel(logging.INFO)
    runtime.propagate = False
    try:
        apply(url)
    finally:
        runtime.removeHandler(counter)
        runtime.propagate = True
        runtime.setLevel(logging.NOTSET)
        quiet.setLevel(logging.WARNING)
    if not counter.applied:
        return "migrations: up to date"
    first = counter.applied[0].split(" -> ")[0].strip() or "an empty database"
    last = counter.applied[-1].split(" -> ")[-1].strip()
    return f"migrations: applied {len(counter.applied)} ({first} -> {last})"


def migrate(settings: Settings) -> int:
    with StopSignals() as signals, database(settings, signals) as (url, described):
        try:
            summary = apply_migrations(url)
        except Exception as exc:
            if unreachable(exc, described):
                return 1
            raise
        print(summary)
    return 0


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def check_port(host: str, port: int) -> None:
    """Raise OSError when host:port cannot be bound, the way uvicorn will bind it (SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))


async def _admin_token_notice(url: str, configured: str | None) -> None:
    """Generate the admin token on the very first start (`ensure_admin_token` prints it, framed); otherwise say in
    one line that it is stored. Nothing when SPENDGATE_ADMIN_TOKEN sets it."""
    from gateway.admin.token import STORED_NOTICE, ensure_admin_token
    from gateway.db import Database

    if configured:
        return
    db = await Database.connect(url, min_size=1, max_size=1)
    try:
        generated = await ensure_admin_token(db, None)
    finally:
        await db.close()
    if generated is None:
        print(STORED_NOTICE, file=sys.stderr, flush=True)


class ReadyLine:
    """Prints `line` once this process holds a listening TCP socket on `port`: in single-worker mode uvicorn
    listens only after the app's startup finished; with workers the parent binds the socket and the first worker
    that finished its startup starts listening on it. Only this process's own sockets count, so another program
    on the port can never make it claim to be ready."""

    def __init__(self, port: int, line: str) -> None:
        self.port = port
        self.line = line
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="spendgate-ready", daemon=True)

    def _listening(self) -> bool:
        import psutil

        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port
                   for c in psutil.Process().net_connections(kind="tcp"))

    def _watch(self) -> None:
        while not self._done.wait(0.05):
            if self._listening():
                print(self.line, file=sys.stderr, flush=True)
                return

    def __enter__(self) -> ReadyLine:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Serve until SIGTERM/SIGINT. Then (uvicorn + Services.stop): stop accepting, let in-flight requests and
    streams finish for up to SPENDGATE_SHUTDOWN_TIMEOUT_S, cancel what is left, settle every reservation this
    process holds, flush the request logs, close the pool; release the embedded database; exit."""
    import asyncio

    import uvicorn


    host = host or settings.host
    port = port or settings.port
    try:
        check_port(host, port)
    except OSError as exc:
        print(f"spendgate: cannot listen on {_url(host, port)}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        return 1
    with StopSignals() as signals, database(settings, signals) as (url, described):
        # Instances starting together are safe: migrations take an advisory lock, the token insert is idempotent.
        try:
            print(f"spendgate: {apply_migrations(url)}", file=sys.stderr, flush=True)
            asyncio.run(_admin_token_notice(url, settings.admin_token))
        except Exception as exc:
            if unreachable(exc, described):
                return 1
            raise
        settings = replace(settings, database_url=url)
        options: dict[str, Any] = {
            "host": host, "port": port, "log_level": "warning", "lifespan": "on",
            "log_config": None,  # uvicorn's own records go through our JSON log lines
            "timeout_graceful_shutdown": max(1, round(settings.shutdown_timeout_seconds)),
            # One Server header, ours: uvicorn sends the `headers` below instead of its own "uvicorn", and the
            # relay never passes an upstream's Server or Date on (gateway/providers/forward.py), so a client sees
            # exactly one Server ("spendgate": the answer came through the gateway) and uvicorn's one Date.
            "headers": [("server", "spendgate")],
        }
        workers = f", {settings.workers} workers" if settings.workers > 1 else ""
        ready = ReadyLine(port, f"spendgate ready on {_url(host, port)} (database: {described}{workers})")
        with ready:
            if settings.workers > 1:
                # each worker process builds its own app (and pool) from the environment
                os.environ["DATABASE_URL"] = url
                uvicorn.run("gateway.serve:served_app", factory=True, workers=settings.workers, **options)
            else:
                uvicorn.run(served_app(settings), **options)
    return 0


def served_app(settings: Settings | None = None) -> Starlette:
    """The app as `spendgate serve` runs it: this process is the gateway's own, so its garbage collector is set
    for serving once the app has started (gateway/collector.py)."""
    from gateway.app import create_app
    from gateway.collector import after_start

    app = create_app(settings)
    app.state.services.on_start(after_start)
    return app
