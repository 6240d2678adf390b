"""Which database an operator command uses: said on stderr (never a password), the same from any directory of a
project (.env and .spendgate found like git finds .git), never created by a command that only operates, and
refused until migrated."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from gateway.admin.cli_db import safe_url
from gateway.settings import Settings, locate_project
from tests.cli.conftest import clean_env, empty_database, spendgate

pytestmark = pytest.mark.timeout(180)


def tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


def test_without_a_database_a_command_says_where_it_looked_and_creates_nothing(tmp_path: Path) -> None:
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    project = locate_project({}, cwd)
    assert project.reason == "cwd", f"a .env or .spendgate above {cwd} would be found: {project}"
    for argv in (("accounts", "list"), ("credits", "topup", "acme", "5"), ("logs", "list", "acme", "default")):
        done = spendgate(*argv, env=clean_env(), cwd=cwd)
        assert done.returncode == 1 and done.stdout == ""
        message = done.stderr.strip()
        assert message.startswith("error: no database: DATABASE_URL is not set and there is no embedded database at "
                                  f"{cwd / '.spendgate' / 'pg'}")
        assert "spendgate migrate" in message and "SPENDGATE_DATA_DIR" in message
        assert tree(tmp_path) == [cwd]


@pytest.mark.slow
def test_a_database_that_is_not_migrated_is_refused_until_spendgate_migrate(tmp_path: Path) -> None:
    with empty_database() as url:
        env = clean_env(DATABASE_URL=url)
        for argv in (("accounts", "list"), ("accounts", "create", "acme")):
            done = spendgate(*argv, env=env, cwd=tmp_path)
            assert done.returncode == 1 and done.stdout == ""
            assert done.stderr.splitlines() == [f"database: {safe_url(url)}",
                                                "error: database not migrated: run `spendgate migrate`"]
        migrated = spendgate("migrate", env=env, cwd=tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stderr.splitlines()[0] == f"database: {safe_url(url)}"
        assert spendgate("accounts", "create", "acme", env=env, cwd=tmp_path).returncode == 0


def with_password(url: str) -> tuple[str, str]:
    """The URL with a password in it (the server's own when it has one; trust authentication ignores one)."""
    parts = urlsplit(url)
    if parts.password:
        return url, parts.password
    netloc = f"{parts.username or 'postgres'}:hunter2-secret@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), "hunter2-secret"


def test_dotenv_is_found_from_a_subdirectory_and_the_line_hides_the_password(cli_database: str,
                                                                            tmp_path: Path) -> None:
    url, password = with_password(cli_database)
    project = tmp_path / "project"
    deeper = project / "src" / "app"
    deeper.mkdir(parents=True)
    (project / ".env").write_text(f"# spendgate\nDATABASE_URL='{url}'\n")
    done = spendgate("accounts", "list", env=clean_env(), cwd=deeper)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [f"database: {safe_url(url)} (DATABASE_URL from {project / '.env'})"]
    assert password not in done.stderr
    # the environment wins over the .env
    other = spendgate("accounts", "list", env=clean_env(DATABASE_URL=cli_database), cwd=deeper)
    assert other.stderr.splitlines() == [f"database: {safe_url(cli_database)}"]


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://app:s3cret@db.internal:5432/spend", "postgresql://app@db.internal:5432/spend"),
    ("postgresql://app:s3cret@[::1]:5432/spend?sslmode=require&password=x",
     "postgresql://app@[::1]:5432/spend?sslmode=require"),
    ("postgresql://db/spend", "postgresql://db/spend"),
    ("postgres://:only-password@db/spend", "postgres://db/spend"),
])
def test_safe_url_removes_every_password(url: str, shown: str) -> None:
    assert safe_url(url) == shown


@pytest.mark.slow
def test_the_embedded_database_is_the_projects_from_any_subdirectory(tmp_path: Path) -> None:
    project = tmp_path / "project"
    sub = project / "sub" / "dir"
    sub.mkdir(parents=True)
    pgdata = project / ".spendgate" / "pg"
    env = clean_env()

    created = spendgate("migrate", env=env, cwd=project)
    assert created.returncode == 0, created.stderr
    assert f"database: embedded at {pgdata} (new: creating it)" in created.stderr.splitlines()

    done = spendgate("accounts", "create", "emb", env=env, cwd=sub)
    assert done.returncode == 0, done.stderr
    line = done.stderr.splitlines()[0]
    assert line.startswith(f"database: embedded at {pgdata}")
    assert "not running: this command starts it" in line  # no `spendgate serve` holds the server
    assert not (sub / ".spendgate").exists() and not (project / "sub" / ".spendgate").exists()

    # SPENDGATE_DATA_DIR pins the project from anywhere
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = spendgate("accounts", "list", "--json", env={**env, "SPENDGATE_DATA_DIR": str(project / ".spendgate")},
                       cwd=elsewhere)
    assert listed.returncode == 0, listed.stderr
    assert "emb" in listed.stdout and listed.stderr.splitlines()[0].startswith(f"database: embedded at {pgdata}")
    assert list(elsewhere.iterdir()) == []
    psql = spendgate("psql", "--", "-At", "-c", "SELECT id FROM accounts", env=env, cwd=sub)
    assert psql.returncode == 0 and psql.stdout.split() == ["emb"], psql.stderr


# -- where settings come from (in-process: no database involved) ----------------------------------------------------


def test_the_project_is_the_nearest_directory_with_a_dotenv_or_a_data_directory(tmp_path: Path) -> None:
    outer, inner = tmp_path / "outer", tmp_path / "outer" / "inner"
    deep = inner / "a" / "b"
    deep.mkdir(parents=True)
    (outer / ".env").write_text("SPENDGATE_PORT=9000\n")
    settings = Settings.from_env({}, cwd=deep)
    assert settings.dotenv == outer / ".env" and settings.port == 9000
    assert settings.data_dir == outer / ".spendgate"

    (inner / ".spendgate").mkdir()  # nearer than the .env: the project is inner, which has no .env
    settings = Settings.from_env({}, cwd=deep)
    assert settings.dotenv is None and settings.port == 8787 and settings.data_dir == inner / ".spendgate"

    (inner / ".env").write_text("SPENDGATE_DATA_DIR=state/db\nSPENDGATE_PORT=9100\n")
    settings = Settings.from_env({"SPENDGATE_PORT": "9200"}, cwd=deep)
    assert settings.dotenv == inner / ".env" and settings.port == 9200  # the environment wins
    assert settings.data_dir == inner / "state" / "db"  # relative to the .env that set it


def test_spendgate_data_dir_in_the_environment_pins_the_project(tmp_path: Path) -> None:
    project, cwd = tmp_path / "srv", tmp_path / "cwd"
    project.mkdir()
    cwd.mkdir()
    (cwd / ".env").write_text("SPENDGATE_PORT=1111\n")
    (project / ".env").write_text("SPENDGATE_PORT=2222\n")
    settings = Settings.from_env({"SPENDGATE_DATA_DIR": str(project / ".spendgate")}, cwd=cwd)
    assert settings.dotenv == project / ".env" and settings.port == 2222
    assert settings.data_dir == project / ".spendgate"
    relative = Settings.from_env({"SPENDGATE_DATA_DIR": "../srv/.spendgate"}, cwd=cwd)
    assert relative.data_dir == project / ".spendgate"  # relative to the working directory
    assert Settings.from_env({}, cwd=cwd, dotenv=None).port == 8787


@pytest.mark.slow
def test_migrate_against_a_database_or_role_that_does_not_exist_says_so_in_one_line(tmp_path: Path) -> None:
    with empty_database() as url:
        parts = urlsplit(url)
        missing_db = urlunsplit((parts.scheme, parts.netloc, "/spendgate_no_such_db", parts.query, ""))
        netloc = f"spendgate_no_such_role@{parts.hostname}:{parts.port or 5432}"
        missing_role = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        for bad, said in ((missing_db, 'database "spendgate_no_such_db" does not exist'),
                          (missing_role, 'role "spendgate_no_such_role" does not exist')):
            done = spendgate("migrate", env=clean_env(DATABASE_URL=bad), cwd=tmp_path)
            assert done.returncode == 1
            lines = done.stderr.splitlines()
            assert "Traceback" not in done.stderr and len(lines) == 2, done.stderr
            assert lines[1].startswith("spendgate: the database refused the connection (") and said in lines[1]
