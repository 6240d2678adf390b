"""`spendgate --help` and the operator commands load only what they use (the serving stack, Alembic and the price
tables stay out), and `create --help` shows the shapes it takes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gateway.admin.cli import POLICY_EXAMPLE, ROUTE_EXAMPLE, RULE_EXAMPLE, SETTING_HELP
from gateway.gateways import GatewaySettings
from tests.cli.conftest import Run, clean_env, spendgate

NOT_FOR_HELP = {"starlette", "httpx", "sqlalchemy", "alembic", "genai_prices", "asyncpg", "aiohttp", "uvicorn",
                "pgserver", "asyncio"}
NOT_FOR_OPERATOR_COMMANDS = {"httpx", "sqlalchemy", "alembic", "genai_prices", "aiohttp", "httpx_aiohttp", "uvicorn",
                             "jwt", "prometheus_client", "orjson"}


def imported(done: subprocess.CompletedProcess[str]) -> set[str]:
    """Top-level packages a run imported, from Python's -X importtime report on stderr."""
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert len(names) > 10, done.stderr[-2000:]  # the report is there
    return {name.split(".")[0] for name in names}


def test_help_imports_nothing_heavy(tmp_path: Path) -> None:
    for argv in (("--help",), ("limits", "create", "--help"), ("logs", "list", "--help")):
        done = spendgate(*argv, env=clean_env(PYTHONPROFILEIMPORTTIME="1"), cwd=tmp_path)
        assert done.returncode == 0 and "usage: spendgate" in done.stdout
        assert imported(done) & NOT_FOR_HELP == set()


def test_an_operator_command_imports_neither_the_serving_stack_nor_migrations(run: Run) -> None:
    done = run("accounts", "list", PYTHONPROFILEIMPORTTIME="1")
    assert done.returncode == 0, done.stderr[-2000:]
    modules = imported(done)
    assert {"asyncpg", "starlette"} <= modules  # it did connect and call the admin app
    assert modules & NOT_FOR_OPERATOR_COMMANDS == set()


def test_create_help_shows_each_shape(tmp_path: Path) -> None:
    def help_of(*argv: str) -> str:
        done = spendgate(*argv, "--help", env=clean_env(), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout

    limits = help_of("limits", "create")
    assert json.dumps(RULE_EXAMPLE, indent=2) in limits
    for word in ("window_type", "fallback_model", "rolling", "monitor", "split", "equals", "alert_at"):
        assert word in limits
    assert json.dumps(POLICY_EXAMPLE) in help_of("policies", "create")
    assert json.dumps(ROUTE_EXAMPLE, indent=2) in help_of("routes", "create")
    gateways = help_of("gateways", "create")
    for name, default in GatewaySettings().to_json().items():
        line = next(line for line in gateways.splitlines() if line.split()[:1] == [name])
        assert line.split()[1] == json.dumps(default) and SETTING_HELP[name] in line


def test_every_gateway_setting_is_described() -> None:
    assert set(SETTING_HELP) == set(GatewaySettings().to_json())


def test_the_schema_check_knows_the_same_heads_as_alembic() -> None:
    from gateway.admin.cli_db import migration_revisions
    from gateway.db import MIGRATIONS_DIR, migration_heads

    heads, known = migration_revisions(MIGRATIONS_DIR / "versions")
    assert heads == migration_heads()
    assert len(known) == len(list((MIGRATIONS_DIR / "versions").glob("*.py")))


@pytest.mark.parametrize("argv", [("keys", "add", "a", "g", "--provider", "openai"),
                                  ("gateways", "update", "a", "g"), ("limits", "create", "a", "g")])
def test_missing_required_options_are_usage_errors(tmp_path: Path, argv: tuple[str, ...]) -> None:
    done = spendgate(*argv, env=clean_env(), cwd=tmp_path)
    assert done.returncode == 2 and "required" in done.stderr
