"""The allowed import directions inside `gateway`, checked on every import statement (module level, inside
functions, and under TYPE_CHECKING alike: a lazy import is still a dependency). Breaking one fails the suite; the
rule says why it exists. The map of who may use whom is in docs/design.md."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"


@dataclass(frozen=True)
class Rule:
    importer: str  # a module or package, dotted ("gateway.ledger" covers gateway.ledger.*)
    forbidden: tuple[str, ...]
    why: str


RULES = (
    Rule("gateway.ledger", ("gateway.middleware", "gateway.providers", "gateway.limits", "gateway.admin",
                            "gateway.app", "gateway.routes", "gateway.logs", "starlette", "httpx"),
         "the ledger knows nothing of HTTP, requests or rules: it moves money between accounts"),
    Rule("gateway.limits", ("gateway.middleware", "gateway.providers", "gateway.admin", "gateway.app",
                            "gateway.routes", "starlette"),
         "spend limits decide on amounts and buckets; the middleware turns a request into their input"),
    Rule("gateway.providers", ("gateway.limits", "gateway.ledger", "gateway.middleware", "gateway.admin",
                               "gateway.app"),
         "providers speak wire formats and report usage; they never reserve or bill"),
    Rule("gateway.middleware", ("gateway.admin", "gateway.app"),
         "nothing on the request path imports the admin API"),
    Rule("gateway.routes", ("gateway.admin", "gateway.app", "gateway.middleware"),
         "dynamic routes are data the request path reads"),
    Rule("gateway.logs", ("gateway.admin", "gateway.app", "gateway.middleware", "gateway.limits",
                          "gateway.ledger", "gateway.providers"),
         "the log writer stores rows it is given"),
    Rule("gateway.analytics", ("gateway.admin", "gateway.app", "gateway.middleware", "gateway.providers"),
         "analytics reads what the log and the counters hold; the admin API and the CLI show it"),
    Rule("gateway.admin", ("gateway.middleware", "gateway.app"),
         "admin uses the domain modules, not the request path"),
    Rule("gateway.dashboard", ("gateway.middleware", "gateway.ledger", "gateway.limits", "gateway.providers",
                               "gateway.logs", "gateway.analytics", "gateway.db", "gateway.routes", "asyncpg"),
         "the dashboard shows what the admin API answers: it reads no table and computes no figure itself"),
    Rule("gateway.migrations", ("gateway",),
         "a migration is history: what it installs must not change when the code does"),
    Rule("gateway.db", ("gateway.middleware", "gateway.providers", "gateway.limits", "gateway.ledger",
                        "gateway.admin", "gateway.app", "gateway.routes", "gateway.logs"),
         "the pool and the migration runner sit under every part"),
    Rule("gateway.pricing", ("gateway.middleware", "gateway.limits", "gateway.ledger", "gateway.admin",
                             "gateway.app"),
         "prices turn usage into a cost; who pays is decided elsewhere"),
    Rule("gateway.money", tuple(f"gateway.{m}" for m in ("middleware", "providers", "limits", "ledger", "admin",
                                                           "app", "routes", "logs", "db", "services", "pricing")),
         "money is the leaf every other module may use (it raises from the one error tree)"),
    Rule("gateway.errors", tuple(f"gateway.{m}" for m in ("middleware", "providers", "limits", "ledger", "admin",
                                                            "app", "routes", "logs", "db", "services")),
         "the error tree is raised everywhere, so it depends on nothing that raises"),
    Rule("gateway.windows", ("gateway",), "calendar and rolling windows are plain time arithmetic"),
    Rule("gateway.exchange", ("gateway.middleware", "gateway.admin", "gateway.app", "gateway.limits",
                              "gateway.ledger"),
         "the per-request record is read by every layer and depends on none"),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(rules: tuple[Rule, ...] = RULES) -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for rule in rules:
            if not _within(module, rule.importer):
                continue
            for line, target in _imports(path):
                for forbidden in rule.forbidden:
                    if _within(target, forbidden) and not _within(target, rule.importer):
                        found.append(f"{path.relative_to(ROOT)}:{line} imports {target}: {rule.why}")
    return sorted(set(found))


def test_imports_go_the_allowed_way() -> None:
    assert violations() == []


def test_the_check_sees_a_wrong_way_import(tmp_path: Path) -> None:
    # the checker itself must catch what it is for: a ledger module importing the middleware
    wrong = PACKAGE / "ledger" / "_wrong_way_probe.py"
    wrong.write_text("from gateway.middleware import spend_limits\n")
    try:
        assert any("_wrong_way_probe" in v for v in violations())
    finally:
        wrong.unlink()


def test_bench_imports_nothing_from_tests() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{line} imports {target}"
                 for path in sorted((ROOT / "bench").glob("*.py")) for line, target in _imports(path)
                 if _within(target, "tests")]
    assert offenders == []


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.importer)
def test_every_rule_names_an_existing_module(rule: Rule) -> None:
    path = ROOT / Path(*rule.importer.split("."))
    assert path.is_dir() or path.with_suffix(".py").is_file(), rule.importer
