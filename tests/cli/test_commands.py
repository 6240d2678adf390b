"""Each operator command through the real `spendgate` console script against a database migrated by
`spendgate migrate`: create -> list -> show -> change -> delete, tables by default and the API's JSON with --json,
`error <status>: message (field)` on stderr with exit 1."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator

import httpx
import pytest

from gateway.admin.cli import POLICY_EXAMPLE, ROUTE_EXAMPLE, RULE_EXAMPLE
from harness.cluster import GatewayProcess, gateway_env
from harness.fakes import FakeServer, openai_app
from tests.cli.conftest import Run

pytestmark = pytest.mark.timeout(180)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
    return done.stdout


def ok_json(done: subprocess.CompletedProcess[str]) -> object:
    return json.loads(ok(done))


def rows(text: str) -> list[list[str]]:
    """A printed table's rows (header excluded), split on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()[1:] if line.strip() != "(none)"]


def new_account(run: Run) -> str:
    account = f"cli-{uuid.uuid4().hex[:8]}"
    ok(run("accounts", "create", account))
    return account


def test_each_command_names_its_database_once_on_stderr_unless_quiet(run: Run, cli_database: str) -> None:
    done = run("accounts", "list")
    ok(done)
    assert done.stderr.splitlines()[0].startswith("database: postgresql://")
    assert len(done.stderr.splitlines()) == 1
    for quiet in (("-q", "accounts", "list"), ("accounts", "list", "--quiet")):
        done = run(*quiet)
        assert ok(done) and done.stderr == ""


def test_gateways_create_list_show_update_delete(run: Run) -> None:
    account = new_account(run)
    created = ok_json(run("gateways", "create", account, "prod", "--json", '{"authentication": true}'))
    assert created["id"] == "prod" and created["authentication"] is True  # type: ignore[index]

    table = ok(run("gateways", "list", account))
    assert table.splitlines()[0].split() == ["ID", "SETTINGS", "CREATED"]
    assert [r[:2] for r in rows(table)] == [["default", "(defaults)"], ["prod", "authentication=true"]]
    assert [g["id"] for g in ok_json(run("gateways", "list", account, "--json"))] == ["default", "prod"]  # type: ignore[union-attr, index]

    shown = ok(run("gateways", "show", account, "prod"))
    assert "authentication             yes" in shown and "byok_only                  no" in shown

    updated = ok_json(run("gateways", "update", account, "prod", "--json", '{"byok_only": true}'))
    assert updated["byok_only"] is True and updated["authentication"] is True  # type: ignore[index]
    assert ok_json(run("gateways", "show", account, "prod", "--json"))["byok_only"] is True  # type: ignore[index]

    refused = run("gateways", "update", account, "prod", "--json", '{"colour": "blue"}')
    assert refused.returncode == 1 and refused.stderr.endswith("error 422: unknown setting 'colour' (colour)\n")
    refused = run("gateways", "update", account, "prod", "--json", "[1]")
    assert refused.returncode == 1 and "error: --json must be a JSON object" in refused.stderr

    assert ok_json(run("gateways", "delete", account, "prod")) == {"id": "prod", "deleted": True}
    assert [r[0] for r in rows(ok(run("gateways", "list", account)))] == ["default"]
    gone = run("gateways", "show", account, "prod")
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.splitlines()[-1] == "error 404: gateway 'prod' not found"


def test_tokens_create_prints_the_secret_once_then_list_and_revoke(run: Run) -> None:
    account = new_account(run)
    done = run("tokens", "create", account, "default", "--name", "ci")
    secret = ok(done).strip()
    assert secret.startswith("sgk_") and "\n" not in secret  # stdout is the secret alone: $(spendgate tokens ...)
    assert "shown this once" in done.stderr and secret not in done.stderr

    listed = rows(ok(run("tokens", "list", account, "default")))
    assert len(listed) == 1 and listed[0][1] == "ci"
    token_id = listed[0][0]
    assert secret not in ok(run("tokens", "list", account, "default", "--json"))

    raw = ok_json(run("tokens", "create", account, "default", "--name", "raw", "--json"))
    assert raw["token"].startswith("sgk_") and raw["name"] == "raw"  # type: ignore[index]

    assert ok_json(run("tokens", "revoke", account, "default", token_id)) == {"id": token_id, "deleted": True}
    assert [r[1] for r in rows(ok(run("tokens", "list", account, "default")))] == ["raw"]
    again = run("tokens", "revoke", account, "default", token_id)
    assert again.returncode == 1 and f"error 404: token '{token_id}' not found" in again.stderr


def test_keys_come_from_stdin_or_an_environment_variable_never_the_command_line(run: Run) -> None:
    account = new_account(run)
    secret = "sk-stdin-" + uuid.uuid4().hex
    added = run("keys", "add", account, "default", "--provider", "openai", "--key-stdin", stdin=secret + "\n")
    assert ok_json(added)["key_last4"] == secret[-4:]  # type: ignore[index]
    from_env = "sk-env-" + uuid.uuid4().hex
    added_env = run("keys", "add", account, "default", "--provider", "groq", "--alias", "team-b",
                    "--key-env", "MY_GROQ_KEY", MY_GROQ_KEY=from_env)
    ok(added_env)
    for done in (added, added_env):
        assert secret not in done.stdout + done.stderr and from_env not in done.stdout + done.stderr

    listed = rows(ok(run("keys", "list", account, "default")))
    assert [(r[1], r[2], r[3]) for r in listed] == [("groq", "team-b", "..." + from_env[-4:]),
                                                    ("openai", "default", "..." + secret[-4:])]

    no_key = run("keys", "add", account, "default", "--provider", "openai", "--alias", "x", "--key-env", "UNSET_VAR")
    assert no_key.returncode == 1 and "UNSET_VAR is not set" in no_key.stderr
    empty = run("keys", "add", account, "default", "--provider", "openai", "--alias", "x", "--key-stdin")
    assert empty.returncode == 1 and "no key on standard input" in empty.stderr
    positional = run("keys", "add", account, "default", "--provider", "openai", "sk-on-the-command-line")
    assert positional.returncode == 2  # argparse: the key is not an argument

    key_id = listed[1][0]
    assert ok_json(run("keys", "delete", account, "default", key_id)) == {"id": key_id, "deleted": True}
    assert [r[1] for r in rows(ok(run("keys", "list", account, "default")))] == ["groq"]


def test_the_shapes_in_create_help_are_accepted_as_they_are_shown(run: Run) -> None:
    account = new_account(run)
    rule = ok_json(run("limits", "create", account, "default", "--json", json.dumps(RULE_EXAMPLE)))
    assert rule["window_type"] == "rolling"  # type: ignore[index]
    listed = rows(ok(run("limits", "list", account, "default")))
    assert [(r[0], r[1], r[2], r[3]) for r in listed] == [(rule["id"], "per-user-monthly", "50.00",  # type: ignore[index]
                                                          "monthly rolling")]
    assert "fallback groq/llama-3.1-8b-instant" in listed[0]
    shown = ok(run("limits", "show", account, "default", rule["id"]))  # type: ignore[index]
    assert "per-user-monthly" in shown

    policy = ok_json(run("policies", "create", account, "default", "--json", json.dumps(POLICY_EXAMPLE)))
    assert rows(ok(run("policies", "list", account, "default"))) == [
        [policy["id"], "interns", "groq/*, openai/gpt-4o-mini"]]  # type: ignore[index]

    ok(run("routes", "create", account, "default", "tiered", "--json", json.dumps(ROUTE_EXAMPLE)))
    ok(run("routes", "add-version", account, "default", "tiered", "--json", json.dumps(ROUTE_EXAMPLE)))
    assert [r[:3] for r in rows(ok(run("routes", "list", account, "default")))] == [["tiered", "1", "2"]]
    versions = rows(ok(run("routes", "versions", account, "default", "tiered")))
    assert [(r[0], r[1]) for r in versions] == [("1", "yes"), ("2", "no")]
    ok(run("routes", "deploy", account, "default", "tiered", "2"))
    assert ok_json(run("routes", "show", account, "default", "tiered", "--json"))["deployed_version"] == 2  # type: ignore[index]

    assert ok_json(run("policies", "delete", account, "default", policy["id"]))["deleted"] is True  # type: ignore[index]
    assert ok_json(run("limits", "delete", account, "default", rule["id"]))["deleted"] is True  # type: ignore[index]
    assert rows(ok(run("limits", "list", account, "default"))) == []


def test_psql_opens_the_same_database(run: Run) -> None:
    account = new_account(run)
    done = run("psql", "--", "-At", "-c", f"SELECT id FROM accounts WHERE id = '{account}'")
    assert ok(done).strip() == account and done.stderr.startswith("database: postgresql://")


def test_lists_page_with_limit_and_cursor(run: Run) -> None:
    account = new_account(run)
    for name in ("a", "b", "c"):
        ok(run("tokens", "create", account, "default", "--name", name))
    first = run("tokens", "list", account, "default", "--limit", "2")
    assert [r[1] for r in rows(ok(first))] == ["a", "b"]
    hint = first.stderr.splitlines()[-1]
    assert hint.startswith("more: repeat with --cursor ")
    rest = run("tokens", "list", account, "default", "--limit", "2", "--cursor", hint.split()[-1])
    assert [r[1] for r in rows(ok(rest))] == ["c"] and "more:" not in rest.stderr


def test_account_commands_print_tables_and_records(run: Run) -> None:
    account = new_account(run)
    ok(run("credits", "topup", account, "50", "--idempotency-key", "k1"))
    credits = ok(run("credits", "show", account))
    assert "balance_usd    50.00" in credits and "auto_topup     -" in credits
    statement = rows(ok(run("credits", "statement", account)))
    assert [(r[1], r[2]) for r in statement] == [("topup", "50.00")]
    assert ok(run("billing", "spending-limit", account)).strip() == "no spending limit"
    ok(run("billing", "spending-limit", account, "--amount", "30", "--duration", "daily"))
    assert "amount_usd     30.00" in ok(run("billing", "spending-limit", account))
    missing = run("credits", "show", "no-such-account")
    assert missing.returncode == 1
    assert missing.stderr.splitlines()[-1] == "error 404: account 'no-such-account' not found"


@pytest.fixture
def upstream() -> Iterator[FakeServer]:
    with FakeServer(openai_app("/v1")) as fake:
        yield fake


def test_a_cli_token_and_key_work_on_a_running_gateway_and_its_logs_read_back(
        run: Run, cli_database: str, upstream: FakeServer) -> None:
    account = new_account(run)
    ok(run("gateways", "create", account, "secure", "--json", '{"authentication": true}'))
    token = ok(run("tokens", "create", account, "secure", "--name", "app")).strip()
    stored_key = "sk-stored-" + uuid.uuid4().hex
    ok(run("keys", "add", account, "secure", "--provider", "openai", "--key-stdin", stdin=stored_key))

    env = gateway_env(cli_database, "cli-admin", {"openai": upstream.url + "/v1"})
    gateway = GatewayProcess(env).start().wait_ready()
    try:
        url = f"{gateway.url}/v1/{account}/secure/openai/chat/completions"
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        auth = {"cf-aig-authorization": f"Bearer {token}"}
        with httpx.Client(timeout=30) as client:
            refused = client.post(url, json=body)  # no token: refused, and not the tenant's to log
            invalid = client.post(url, json={**body, "max_tokens": -1}, headers=auth)  # refused, and logged
            answered = client.post(url, json=body, headers=auth)
    finally:
        gateway.stop()
    assert refused.status_code == 401 and invalid.status_code == 400
    assert answered.status_code == 200, answered.text
    assert upstream.app.recorder.last.key == stored_key  # the key stored through stdin reached the provider

    listed = ok(run("logs", "list", account, "secure"))
    assert listed.splitlines()[0].split() == ["TIME", "STATUS", "PROVIDER", "MODEL", "TOKENS", "IN/OUT", "COST",
                                              "USD", "PAID", "BY", "GUARDRAILS", "ID"]
    logs = rows(listed)
    assert [r[1] for r in logs] == ["200", "400"]  # newest first
    assert logs[0][2:4] == ["openai", "gpt-4o-mini"]
    assert logs[0][6] == "byok"  # the stored key paid
    assert [r[1] for r in rows(ok(run("logs", "list", account, "secure", "--status", "400")))] == ["400"]
    raw = ok_json(run("logs", "list", account, "secure", "--json", "--provider", "openai"))
    assert {r["status_code"] for r in raw} == {200, 400}  # type: ignore[union-attr, index]
    answered_log = next(r for r in raw if r["status_code"] == 200)  # type: ignore[union-attr, index]
    assert logs[0][4] == f"{answered_log['tokens_in']}/{answered_log['tokens_out']}"

    shown = ok(run("logs", "show", account, "secure", answered_log["id"]))
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in shown.splitlines())
    assert fields["id"] == answered_log["id"] and fields["status_code"] == "200"
    assert fields["billing_mode"] == "byok" and fields["provider"] == "openai"
    assert stored_key not in shown and token not in shown
