"""Gateway instances as real processes (`spendgate serve` on loopback ports), for multi-instance, cluster and
fault tests. Each process gets its own log file, is waited for on `/readyz`, and is always stopped."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gateway_env(database_url: str, admin_token: str, upstreams: dict[str, str], **extra: str) -> dict[str, str]:
    """Environment of a `spendgate serve` process: one database, the fakes as upstreams with gateway keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPENDGATE_")}
    # a small pool per process: the suite shares one Postgres (max_connections 100) with other test pools
    env.update(DATABASE_URL=database_url, SPENDGATE_ADMIN_TOKEN=admin_token, SPENDGATE_DB_POOL_MAX="10")
    for provider, url in upstreams.items():
        name = provider.upper().replace("-", "_")
        env[f"SPENDGATE_UPSTREAM_{name}"] = url
        env[f"SPENDGATE_KEY_{name}"] = f"gw-key-{provider}"
    env.update(extra)
    return env


class GatewayProcess:
    def __init__(self, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.workdir = Path(tempfile.mkdtemp(prefix="spendgate-proc-"))
        self.log_path = self.workdir / "gateway.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**self.env, "SPENDGATE_DATA_DIR": str(self.workdir / "data"),
                 "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def wait_ready(self, timeout: float = 60.0) -> GatewayProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gateway on {self.port} not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return getattr(self, "_final_log", "")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def wait(self, timeout: float) -> int | None:
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL past the timeout. Returns the exit code. The work directory goes too
        (read `log()` before stopping when a test wants it)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            if self.wait(timeout) is None:
                self.process.kill()
                self.process.wait(10)
        self._final_log = self.log()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode


@contextlib.contextmanager
def running(processes: list[GatewayProcess], timeout: float = 90.0) -> Iterator[list[GatewayProcess]]:
    """Start them all, wait until each is ready, and always stop them all."""
    start_all(processes, timeout)
    try:
        yield processes
    finally:
        for p in processes:
            p.stop()


def start_all(processes: list[GatewayProcess], timeout: float = 90.0) -> list[GatewayProcess]:
    for p in processes:
        p.start()
    try:
        for p in processes:
            p.wait_ready(timeout)
    except BaseException:
        for p in processes:
            p.stop(5)
        raise
    return processes


USD_PER_TOKEN_OUT = "1000"  # USD per million output tokens: one output token costs $0.001


class Operator:
    """What an operator does through the admin API of any instance: tenants, prices, rules, and reading back
    buckets and credits."""

    def __init__(self, base_url: str, admin_token: str) -> None:
        self.base_url = base_url
        self.admin_token = admin_token

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url + "/admin", timeout=10,
                            headers={"Authorization": f"Bearer {self.admin_token}"})

    def new_account(self, *, credits_usd: str | None = None, models: tuple[str, ...] = ("gpt-4o-mini",),
                    **settings: object) -> str:
        """A fresh account with gateway `g` whose models cost $0.001 per output token and nothing per input
        token (a request's worst case is its cost when the fake reports max_tokens output tokens)."""
        import uuid

        account = f"op-{uuid.uuid4().hex[:10]}"
        with self.admin() as admin:
            assert admin.post("/accounts", json={"id": account}).status_code == 201
            assert admin.post(f"/accounts/{account}/gateways", json={"id": "g", **settings}).status_code == 201
            prices = [{"provider": "*", "model": m, "input_per_mtok": "0", "output_per_mtok": USD_PER_TOKEN_OUT}
                      for m in models]
            assert admin.put(f"/accounts/{account}/gateways/g/prices", json={"prices": prices}).status_code == 200
            if credits_usd:
                assert admin.post(f"/accounts/{account}/credits/topups",
                                  json={"amount_usd": credits_usd, "idempotency_key": "seed"}).status_code == 201
        return account

    def rule(self, account: str, **spec: object) -> dict[str, Any]:
        with self.admin() as admin:
            answer = admin.post(f"/accounts/{account}/gateways/g/spend-limits", json=spec)
        assert answer.status_code == 201, answer.text
        return answer.json()["result"]  # type: ignore[no-any-return]

    def buckets(self, account: str, rule_id: str) -> list[dict[str, Any]]:
        with self.admin() as admin:
            return admin.get(f"/accounts/{account}/gateways/g/spend-limits/{rule_id}").json()["result"]["buckets"]

    def credits(self, account: str) -> dict[str, Any]:
        with self.admin() as admin:
            return admin.get(f"/accounts/{account}/credits").json()["result"]  # type: ignore[no-any-return]
