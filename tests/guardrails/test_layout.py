"""The guardrails package is a leaf: detectors, policy and redactors know nothing of requests, providers or the
database (the middleware turns a request into their input), and the CLI shows what they found."""

from __future__ import annotations

from gateway.admin.cli import VIEWS
from tests.test_import_directions import Rule, violations

LEAF = Rule("gateway.guardrails", ("gateway.middleware", "gateway.providers", "gateway.limits", "gateway.ledger",
                                   "gateway.admin", "gateway.app", "gateway.logs", "gateway.db", "starlette",
                                   "httpx"),
            "guardrails find and rewrite text; the middleware decides what a request's text is")


def test_the_guardrails_package_imports_nothing_of_the_request_path() -> None:
    assert violations((LEAF,)) == []


def test_spendgate_logs_list_shows_what_the_guardrails_found() -> None:
    rows = [{"created_at": "2026-12-01T10:00:00+00:00", "status_code": 400, "provider": "openai", "model": "m",
             "id": "1", "guardrails": {"prompt": {"pii.email": "redact"}, "response": {"secret.aws": "block"}}},
            {"created_at": "2026-12-01T10:00:01+00:00", "status_code": 200, "id": "2", "guardrails": None}]
    table = VIEWS[("logs", "list")](rows).splitlines()
    assert "GUARDRAILS" in table[0]
    assert "prompt:pii.email=redact response:secret.aws=block" in table[1]
    assert "jane" not in "\n".join(table)
