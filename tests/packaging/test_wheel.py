"""The package as a user installs it: a wheel built from the source, installed outside the checkout, migrates an
empty database and serves. The migrations are package data (gateway/migrations); nothing may be found through a
path relative to the checkout."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from harness.cluster import free_port
from harness.pg import database_beside

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "gateway" / "migrations"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built offline (this venv's setuptools, no build isolation) from a copy of the source: a build in the
    checkout would reuse its build/ directory, where files from an older build can linger and hide a missing one."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "gateway", src / "gateway", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                            "--quiet", "-w", str(tmp / "dist")], cwd=src, capture_output=True, text=True,
                           timeout=180)
    assert built.returncode == 0, built.stdout + built.stderr
    [path] = (tmp / "dist").glob("spendgate-*.whl")
    return path


def test_the_wheel_ships_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    versions = sorted(p.name for p in (MIGRATIONS / "versions").glob("*.py"))
    assert len(versions) >= 12, versions
    expected = {"gateway/migrations/env.py", "gateway/migrations/script.py.mako", "gateway/db.py",
                *(f"gateway/migrations/versions/{name}" for name in versions)}
    assert expected <= names, sorted(expected - names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    assert b"spendgate = gateway.cli:main" in entry_points


def test_the_wheel_ships_the_dashboard(wheel: Path) -> None:
    """Every file the dashboard serves or renders is package data (gateway/dashboard/app.py reads them through
    importlib.resources), the vendored chart library and its licence included."""
    from gateway.dashboard.app import ASSETS

    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"gateway/dashboard/templates/shell.html", "gateway/dashboard/templates/login.html",
                *(f"gateway/dashboard/static/{name}" for name in ASSETS)}
    assert expected <= names, sorted(expected - names)


@pytest.fixture
def installed(wheel: Path, tmp_path: Path) -> Path:
    """A fresh venv outside the checkout with the wheel installed (--no-deps); the dependencies come from this
    venv's site-packages through a .pth line (a path line adds the directory only: this venv's editable install of
    the checkout, itself a .pth hook, is not run there)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = next(venv.glob("lib/python*/site-packages"))
    here = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "dependencies.pth").write_text("\n".join(here) + "\n")
    # pip --python installs into that venv, with console scripts that start its interpreter
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
                           "--no-deps", "--no-index", "--quiet", str(wheel)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


@pytest.fixture
def empty_database(database_url: str) -> Iterator[str]:
    with database_beside(database_url, "spendgate_wheel") as empty:
        yield empty


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPENDGATE_", "PYTHON", "VIRTUAL_ENV")) and k != "DATABASE_URL"}
    env.update(extra)
    return env


async def _heads(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        return {r["version_num"] for r in await conn.fetch("SELECT version_num FROM alembic_version")}
    finally:
        await conn.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_the_installed_wheel_migrates_and_serves_outside_the_checkout(installed: Path, empty_database: str,
                                                                      tmp_path: Path) -> None:
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = _clean_env(DATABASE_URL=empty_database, SPENDGATE_ADMIN_TOKEN="wheel-test", SPENDGATE_DB_POOL_MAX="3")
    where = subprocess.run([str(installed / "bin" / "python"), "-c",
                            "import gateway, gateway.db as d; print(gateway.__file__, d.MIGRATIONS_DIR)"],
                           cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    module, migrations = where.stdout.split()
    assert Path(module).is_relative_to(installed) and Path(migrations).is_relative_to(installed), where.stderr
    assert not Path(module).is_relative_to(ROOT)

    migrated = subprocess.run([str(installed / "bin" / "spendgate"), "migrate"], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120)
    assert migrated.returncode == 0 and "migrations: applied" in migrated.stdout, migrated.stderr[-3000:]
    versions = {p.stem for p in (MIGRATIONS / "versions").glob("*.py")}
    heads = asyncio.run(_heads(empty_database))
    assert heads and heads <= versions, (heads, versions)

    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen([str(installed / "bin" / "spendgate"), "serve", "--port", str(port)], cwd=cwd,
                                  env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "spendgate ready on" not in log_path.read_text():
            assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.1)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(30)
