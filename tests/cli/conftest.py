"""The operator CLI as people run it: the installed `spendgate` console script, in a subprocess, with an environment
of its own (no DATABASE_URL or SPENDGATE_* from the test run) and a working directory of the test's choosing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.pg import database_beside, server_url

SPENDGATE = Path(sys.executable).parent / "spendgate"
Run = Callable[..., subprocess.CompletedProcess[str]]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("SPENDGATE_")}
    env.update(extra)
    return env


def spendgate(*argv: str, env: dict[str, str], cwd: Path, stdin: str = "",
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert SPENDGATE.exists(), f"{SPENDGATE} is missing: install the package (pip install -e .)"
    return subprocess.run([str(SPENDGATE), *argv], env=env, cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=timeout, check=False)


@contextmanager
def empty_database() -> Iterator[str]:
    """A new database with nothing in it (not migrated), dropped afterwards."""
    with server_url() as (url, _source), database_beside(url, "spendgate_cli") as empty:
        yield empty


@pytest.fixture(scope="module")
def cli_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh database migrated by `spendgate migrate`, for one test module."""
    with empty_database() as url:
        done = spendgate("migrate", env=clean_env(DATABASE_URL=url), cwd=tmp_path_factory.mktemp("migrate"))
        assert done.returncode == 0, done.stderr
        yield url


@pytest.fixture
def run(cli_database: str, tmp_path: Path) -> Run:
    """`run("accounts", "list")`: the CLI against the module's database, from an empty directory."""

    def call(*argv: str, stdin: str = "", **extra: str) -> subprocess.CompletedProcess[str]:
        return spendgate(*argv, env=clean_env(DATABASE_URL=cli_database, **extra), cwd=tmp_path, stdin=stdin)

    return call
