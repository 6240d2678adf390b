"""`spendgate serve` as a process: the console (a ready line only once the socket accepts connections, the admin
token framed on the first start and one line on later ones, a port in use ends it before anything starts) and the
embedded Postgres stopping with it (SIGTERM, SIGINT, and after a predecessor was killed with SIGKILL)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import pytest

from harness.cluster import free_port
from harness.pg import database_beside

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]
READY = "spendgate ready on "


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDGATE_") and k != "DATABASE_URL"}
    env.update(PYTHONPATH=str(ROOT), SPENDGATE_DB_POOL_MAX="3", **extra)
    return env


class Serve:
    """One `spendgate serve` process; its stdout and stderr go to one file."""

    def __init__(self, workdir: Path, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"serve-{self.port}-{uuid.uuid4().hex[:6]}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
                env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> str:
        """The ready line; at the moment it appears the port must already accept connections."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.output().splitlines() if line.startswith(READY)]
            if lines:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                    pass
                return lines[0]
            assert self.process.poll() is None, f"exited with {self.process.returncode}:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, self.output()[-4000:]
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 45) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# -- a fresh database on the test server, for the console tests ------------------------------------------------------


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """A new, empty database; its URL carries a password the server does not ask for (trust authentication), so
    that the console can be checked for never printing it."""
    with database_beside(database_url, "spendgate_serve") as empty:
        parts = urlsplit(empty)
        netloc = parts.netloc
        if parts.password is None and "@" in netloc:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user}:not-to-be-printed@{host}"
        yield urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def test_ready_line_after_bind_and_the_admin_token_once(fresh_database: str, tmp_path: Path) -> None:
    password = urlsplit(fresh_database).password
    first = Serve(tmp_path, clean_env(DATABASE_URL=fresh_database))
    try:
        ready = first.wait_ready()
        out = first.output()
        assert ready == f"{READY}{first.url} (database: {_without_password(fresh_database)})", ready
        assert httpx.get(first.url + "/readyz", timeout=5).status_code == 200
        # the token: framed by rules, between blank lines, on a line of its own; shown before the ready line
        framed = re.search(r"\n\n(=+)\n(?:.*\n)*?\s+(sgadm_[\w-]+)\n(?:.*\n)*?\1\n\n", out)
        assert framed and len(framed.group(1)) >= 40, out[-3000:]
        token = framed.group(2)
        assert out.count(token) == 1 and out.index(token) < out.index(READY)
        # migrated first (an empty database), said in one line, not one per revision
        assert re.search(r"^spendgate: migrations: applied \d+ \(.+ -> .+\)$", out, re.M), out[-3000:]
        assert out.index("migrations: applied") < out.index(READY) and "Running upgrade" not in out
        answer = httpx.get(first.url + "/admin/accounts", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert answer.status_code == 200, answer.text
    finally:
        first.stop()
    second = Serve(tmp_path, clean_env(DATABASE_URL=fresh_database))
    try:
        second.wait_ready()
        out = second.output()
        stored = [line for line in out.splitlines() if "admin API token is stored" in line]
        assert len(stored) == 1 and "spendgate admin-token rotate" in stored[0], out[-3000:]
        assert "sgadm_" not in out and "=" * 40 not in out
        assert "spendgate: migrations: up to date" in out and "alembic" not in out  # nothing else from Alembic
    finally:
        second.stop()
    for server in (first, second):
        assert password and password not in server.output()
        assert server.output().count(READY) == 1


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.username}@{parts.hostname}:{parts.port}{parts.path}"


def test_a_port_in_use_ends_serve_without_a_ready_line(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Serve(tmp_path, clean_env(DATABASE_URL=database_url, SPENDGATE_ADMIN_TOKEN="t"), port=port)
        code = server.wait(60)
    out = server.output()
    assert code != 0 and READY not in out, (code, out)
    assert f"cannot listen on http://127.0.0.1:{port}" in out, out


def test_workers_print_one_ready_line(database_url: str, tmp_path: Path) -> None:
    server = Serve(tmp_path, clean_env(DATABASE_URL=database_url, SPENDGATE_ADMIN_TOKEN="t", SPENDGATE_WORKERS="2"))
    try:
        ready = server.wait_ready()
        assert ready.startswith(f"{READY}{server.url} (") and ready.endswith(", 2 workers)"), ready
        assert httpx.get(server.url + "/readyz", timeout=5).status_code == 200
        server.signal(signal.SIGTERM)
        assert server.wait() == 0, server.output()[-3000:]
    finally:
        server.stop()
    assert server.output().count(READY) == 1


# -- the embedded Postgres ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SPENDGATE_DATA_DIR for these tests (initdb once); each test leaves its server stopped."""
    return tmp_path_factory.mktemp("embedded") / "data"


def embedded_env(data_dir: Path) -> dict[str, str]:
    return clean_env(SPENDGATE_DATA_DIR=str(data_dir), SPENDGATE_ADMIN_TOKEN="embedded-test")


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def holders(pgdata: Path) -> list[int]:
    import json

    path = pgdata / ".handle_pids.json"
    return json.loads(path.read_text()) if path.exists() else []


def assert_stopped(pgdata: Path, pid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (pgdata / "postmaster.pid").exists() or running(pid):
        assert time.monotonic() < deadline, f"the embedded postgres [{pid}] still runs: {holders(pgdata)}"
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_embedded_postgres_stops_with_serve(data_dir: Path, sig: signal.Signals, tmp_path: Path) -> None:
    pgdata = (data_dir / "pg").resolve()
    server = Serve(tmp_path, embedded_env(data_dir))
    try:
        ready = server.wait_ready()
        assert ready.endswith(f"(database: embedded at {pgdata})"), ready
        pid = postmaster_pid(pgdata)
        assert running(pid) and holders(pgdata) == [server.process.pid]
        server.signal(sig)
        code = server.wait()
    finally:
        server.stop()
    assert code == -sig, (code, server.output()[-3000:])  # ended by that signal, as uvicorn alone would
    assert_stopped(pgdata, pid)
    assert holders(pgdata) == []


def test_a_killed_serve_leaves_no_handle_that_keeps_postgres_running(data_dir: Path, tmp_path: Path) -> None:
    pgdata = (data_dir / "pg").resolve()
    killed = Serve(tmp_path, embedded_env(data_dir))
    try:
        killed.wait_ready()
        pid = postmaster_pid(pgdata)
        killed.process.kill()
        assert killed.wait() == -signal.SIGKILL
    finally:
        killed.stop()
    assert holders(pgdata) == [killed.process.pid] and running(pid)  # what SIGKILL leaves: a handle, a server
    server = Serve(tmp_path, embedded_env(data_dir))
    try:
        server.wait_ready()
        assert postmaster_pid(pgdata) == pid  # the orphaned server, reused
        assert holders(pgdata) == [server.process.pid]  # the dead process's handle is gone
        server.signal(signal.SIGTERM)
        assert server.wait() == -signal.SIGTERM, server.output()[-3000:]
    finally:
        server.stop()
    assert_stopped(pgdata, pid)
