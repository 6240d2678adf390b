"""The documentation in the repository stays true to the code: every setting is documented, links resolve, and
nothing points at documents that are not shipped."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.settings import PROVIDERS, Settings, env_name

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()
DOCS = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), ROOT / "bench/README.md", ROOT / "deploy/README.md"])


def _variables_the_code_reads() -> set[str]:
    source = (ROOT / "gateway/settings.py").read_text()
    names = set(re.findall(r'get\("((?:SPENDGATE_|DATABASE_)[A-Z0-9_]+)"\)', source))
    for template in re.findall(r'get\(f"(SPENDGATE_[A-Z_]+)\{suffix\}([A-Z_]*)"\)', source):
        names |= {template[0] + env_name(p) + template[1] for p in PROVIDERS}
    return names


def test_the_variable_scan_sees_every_setting() -> None:
    # a sanity check of the scan itself, so the tests below cannot pass on an empty set
    names = _variables_the_code_reads()
    assert {"DATABASE_URL", "SPENDGATE_PORT", "SPENDGATE_KEY_OPENAI", "SPENDGATE_UPSTREAM_GROQ_ZDR"} <= names
    assert len(names) >= 19 + 4 * len(PROVIDERS)


@pytest.mark.parametrize("name", sorted(_variables_the_code_reads()))
def test_every_variable_is_in_env_example(name: str) -> None:
    assert re.search(rf"^# {name}=", ENV_EXAMPLE, re.M), f"{name} is missing from .env.example"


@pytest.mark.parametrize("name", sorted(_variables_the_code_reads()))
def test_every_variable_is_in_the_readme(name: str) -> None:
    generic = re.sub(r"_(" + "|".join(env_name(p) for p in PROVIDERS) + r")(_ZDR)?$", r"_<P>\2", name)
    assert f"`{name}`" in README or f"`{generic}`" in README, f"{name} is not in the README's configuration"


def test_env_example_parses_to_the_defaults() -> None:
    uncommented = "\n".join(line.removeprefix("# ") for line in ENV_EXAMPLE.splitlines()
                            if re.match(r"# [A-Z_]+=", line))
    values = dict(line.split("=", 1) for line in uncommented.splitlines())
    # the values that are defaults (not examples) equal the code's defaults
    defaults = Settings.from_env({}, dotenv=None)
    assert int(values["SPENDGATE_PORT"]) == defaults.port
    assert values["SPENDGATE_HOST"] == defaults.host
    assert int(values["SPENDGATE_DB_POOL_MAX"]) == defaults.db_pool_max
    assert int(values["SPENDGATE_MAX_BODY_BYTES"]) == defaults.max_body_bytes
    assert float(values["SPENDGATE_SHUTDOWN_TIMEOUT_S"]) == defaults.shutdown_timeout_seconds
    assert int(values["SPENDGATE_HOLD_TTL_SECONDS"]) == defaults.hold_ttl_seconds
    assert float(values["SPENDGATE_SWEEP_INTERVAL_S"]) == defaults.sweep_interval_seconds
    assert values["SPENDGATE_DB_UNAVAILABLE"] == defaults.db_unavailable
    assert tuple(values["SPENDGATE_TRUSTED_PROXIES"].split(",")) == defaults.trusted_proxies
    for p in PROVIDERS:
        assert values[f"SPENDGATE_UPSTREAM_{env_name(p)}"] == defaults.providers[p].upstream


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to {target}, which does not exist"


def test_nothing_points_at_documents_outside_the_repository() -> None:
    places = [*DOCS, *ROOT.glob("gateway/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py")]
    # a citation, not a variable that happens to be called SPEC
    pattern = re.compile(r"\bSPEC(\.md|\s*§|\s+\d|\s+section)|DESIGN\.md|STYLE\.md|\.\./shared/")
    offenders = [str(p.relative_to(ROOT)) for p in places
                 if p != Path(__file__).resolve() and pattern.search(p.read_text())]
    assert not offenders, offenders
