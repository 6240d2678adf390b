"""Run an ASGI app under uvicorn on 127.0.0.1 (ephemeral port) in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import weakref
from types import TracebackType
from typing import Any, Literal

import uvicorn


class FakeServer:
    """`with FakeServer(app) as srv:` / `async with FakeServer(app) as srv:`, or `.start()` / `.stop()`.

    The port is bound at construction, so `url` is known before `start()`.
    """

    def __init__(self, app: Any, *, lifespan: Literal["auto", "on", "off"] = "off", log_level: str = "warning",
                 loop: str = "asyncio", graceful_timeout: int = 2) -> None:
        self.app = app
        # The protocol named: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections whose socket
        # says IPPROTO_TCP, and accepted connections inherit this socket's 0 otherwise. Without it every answer
        # written in two parts waited for the client's delayed ACK: ~40 ms per request, most of the suite's time.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._close_sock = weakref.finalize(self, self.sock.close)  # never leak the socket, even if never started
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.host, self.port = self.sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level=log_level, lifespan=lifespan,
                                access_log=False, loop=loop, timeout_keep_alive=30,
                                timeout_graceful_shutdown=graceful_timeout)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"FakeServer({self.url})"

    def start(self, timeout: float = 10.0) -> FakeServer:
        """Start serving; returns once the server accepts connections."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                        name=f"fake-server-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                self._close_sock()
                raise RuntimeError(f"server on {self.url} failed to start (see the uvicorn log)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.url} did not start within {timeout} s")
            time.sleep(0.002)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and wait for the thread; open connections get `graceful_timeout` seconds to finish."""
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self.server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                self.server.force_exit = True
                thread.join(timeout)
        self._close_sock()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> FakeServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)
