"""Debian's nginx in front of `spendgate serve` processes, as a subprocess that any user can run.

The config is deploy/nginx.conf itself (so the test exercises the shipped proxy settings: least_conn, keepalive,
HTTP/1.1 upstream, buffering off, no retry of a sent request), with only the environment-specific lines rewritten:
the upstream servers become loopback ports, `listen` becomes a free loopback port, and pid, error log, access log
and every temp path live in a private directory, so nothing under /etc, /var or /run is touched. The access log
records `$upstream_addr` per request, which shows which instance served what.

By hand (three gateways already serving on 8781-8783; Ctrl-C stops nginx):

    .venv/bin/python -m harness.nginx 8781 8782 8783 --listen 8080
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

DEPLOY_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
ACCESS_FORMAT = ('{"status":$status,"upstream":"$upstream_addr","upstream_status":"$upstream_status",'
                 '"method":"$request_method","uri":"$request_uri","request_time":$request_time}')


def nginx_binary() -> str | None:
    """nginx on PATH, or where Debian puts it (/usr/sbin is not on every user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def _sub_exactly(pattern: str, repl: str, text: str, count: int) -> str:
    """re.subn that insists on `count` matches: a change to deploy/nginx.conf that this rewrite no longer
    understands fails loudly instead of silently testing something else."""
    new, n = re.subn(pattern, repl, text, flags=re.M)
    if n != count:
        raise ValueError(f"deploy/nginx.conf: expected {count} match(es) of {pattern!r}, found {n}")
    return new


def render_config(workdir: Path, upstreams: list[str], port: int, base: str | None = None) -> str:
    """deploy/nginx.conf for a local run: `upstreams` are host:port of the gateways, nginx listens on port."""
    text = base if base is not None else DEPLOY_CONF.read_text()
    servers = re.findall(r"^([ \t]*)server \S+:\d+( [^;]*)?;$", text, flags=re.M)
    if not servers:
        raise ValueError("deploy/nginx.conf: no upstream server lines")
    indent, options = servers[0][0], servers[0][1]
    lines = "\n".join(f"{indent}server {u}{options};" for u in upstreams)
    text = _sub_exactly(r"^[ \t]*server \S+:\d+( [^;]*)?;\n", "", text, len(servers))
    text = _sub_exactly(r"^([ \t]*)(least_conn;)$", rf"\1\2\n{lines}", text, 1)
    text = _sub_exactly(r"^([ \t]*)listen \d+;$", rf"\1listen 127.0.0.1:{port};", text, 1)
    text = _sub_exactly(r"^worker_processes \S+;$", "worker_processes 2;", text, 1)
    text = _sub_exactly(r"worker_connections \d+;", "worker_connections 1024;", text, 1)
    # nginx workers of a root master switch to `nobody`, who cannot enter a private temp dir: stay the same user
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    top = f"{user}pid {workdir}/nginx.pid;\nerror_log {workdir}/error.log warn;\n"
    temp = "".join(f"  {name}_temp_path {workdir}/temp/{name};\n" for name in TEMP_PATHS)
    http = (f"  log_format upstream escape=json '{ACCESS_FORMAT}';\n"
            f"  access_log {workdir}/access.log upstream;\n{temp}")
    text = _sub_exactly(r"^http \{\n", "http {\n" + http, text, 1)
    return top + text


class Nginx:
    """`with Nginx(["127.0.0.1:8781", ...]) as lb:` starts nginx, waits until it answers, always stops it."""

    def __init__(self, upstreams: list[str], port: int | None = None, binary: str | None = None) -> None:
        from harness.cluster import free_port

        found = binary or nginx_binary()
        if found is None:
            raise FileNotFoundError("nginx is not installed")
        self.binary = found
        self.upstreams = upstreams
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = Path(tempfile.mkdtemp(prefix="spendgate-nginx-"))
        self.conf = self.workdir / "nginx.conf"
        self.access_log = self.workdir / "access.log"
        self.error_log = self.workdir / "error.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0, ready_path: str = "/healthz") -> Nginx:
        for name in TEMP_PATHS:
            (self.workdir / "temp" / name).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(render_config(self.workdir, self.upstreams, self.port))
        # -e: the compiled-in error log (/var/log/nginx) is not even opened; -p: relative paths stay in workdir
        command = [self.binary, "-p", f"{self.workdir}/", "-c", str(self.conf), "-e", str(self.error_log),
                   "-g", "daemon off;"]
        with (self.workdir / "stderr.log").open("wb") as stderr:
            # own session: if the master must be killed, its workers go with the process group
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                            start_new_session=True)
        try:
            self._wait_answering(timeout, ready_path)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_answering(self, timeout: float, path: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.diagnostics()}")
            try:
                if httpx.get(self.url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"nginx on {self.port} did not answer {path} with 200 in {timeout}s:\n{self.diagnostics()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGQUIT (graceful: finish open requests), then SIGKILL to the whole process group past the timeout."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        return process.returncode

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def access(self) -> list[dict[str, Any]]:
        """The access log so far, one dict per request (see ACCESS_FORMAT)."""
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def diagnostics(self) -> str:
        parts = []
        for path in (self.workdir / "stderr.log", self.error_log):
            if path.exists():
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="nginx (deploy/nginx.conf) in front of local gateway ports")
    parser.add_argument("ports", nargs="+", type=int, help="ports of `spendgate serve` processes on 127.0.0.1")
    parser.add_argument("--listen", type=int, default=8080)
    args = parser.parse_args(argv)
    lb = Nginx([f"127.0.0.1:{p}" for p in args.ports], port=args.listen)
    lb.start()
    print(f"nginx on {lb.url} (config, logs: {lb.workdir}); Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        assert lb.process is not None
        lb.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        lb.__exit__()
    return 0


if __name__ == "__main__":
    sys.exit(main())
