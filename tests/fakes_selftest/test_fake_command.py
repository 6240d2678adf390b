"""`python -m harness.fakes <provider>`: a fake provider a newcomer runs to try the gateway offline, the README's way
(it prints the `.env` line; the gateway's own key reaches it and it answers)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("provider", "path", "headers", "body"), [
    ("openai", "/v1/chat/completions", {"authorization": "Bearer anything"},
     {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say hi"}]}),
    ("anthropic", "/v1/messages", {"x-api-key": "anything", "anthropic-version": "2023-06-01"},
     {"model": "claude-haiku-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "say hi"}]}),
    ("google-ai-studio", "/v1beta/models/gemini-2.5-flash:generateContent", {"x-goog-api-key": "anything"},
     {"contents": [{"role": "user", "parts": [{"text": "say hi"}]}]}),
])
def test_a_fake_provider_runs_as_a_command(provider: str, path: str, headers: dict[str, str],
                                           body: dict[str, object]) -> None:
    port = _free_port()
    with subprocess.Popen([sys.executable, "-m", "harness.fakes", provider, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        _check(proc, provider, port, path, headers, body)


def _check(proc: subprocess.Popen[str], provider: str, port: int, path: str, headers: dict[str, str],
           body: dict[str, object]) -> None:
    try:
        assert proc.stdout is not None
        first, env_line = proc.stdout.readline(), proc.stdout.readline().strip()
        assert first.startswith(f"fake {provider} on http://127.0.0.1:{port}")
        assert env_line.startswith("SPENDGATE_UPSTREAM_") and env_line.endswith(f"127.0.0.1:{port}" + (
            "/v1" if provider == "openai" else ""))
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}{path}", json=body, headers=headers, timeout=5)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline, "the fake did not start"
                time.sleep(0.1)
        assert answer.status_code == 200, answer.text
        assert "Hello from fake-" in answer.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
