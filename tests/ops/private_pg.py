"""A Postgres server of the test's own (the `pgserver` package's binaries, a temporary data directory, a Unix
socket), so that a fault test can stop and restart it without touching the server the rest of the suite uses."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pgserver
from pgserver._commands import pg_ctl


class PrivatePostgres:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="spendgate-private-pg-"))
        self.server = pgserver.get_server(self.root / "pg", cleanup_mode="stop")
        self.url = str(self.server.get_uri())
        self.socket_dir = parse_qs(urlsplit(self.url).query)["host"][0]

    def stop(self) -> None:
        """Fast shutdown: every client connection is cut, as in a failover or a restart."""
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)

    def start(self) -> None:
        pg_ctl(["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start"],
               pgdata=self.server.pgdata, user=self.server.system_user, timeout=30)

    def close(self) -> None:
        try:
            self.server.cleanup()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
