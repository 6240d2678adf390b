"""A gateway's `guardrails` setting: what to do when a detector finds something in a prompt or a response.

    {"prompt": {"pii.*": "redact", "secret.*": "block"}, "response": {"pii.email": "flag"}}

Keys are categories (`pii.email`) or a prefix with `.*` (`pii.*`, `secret.*`), or `*` for every category; a
category's own key wins over a prefix, a prefix over `*`. Actions: `flag` (the log row names the category),
`redact` (each match becomes `[REDACTED:<category>]`), `block` (the request or the answer is refused). A side
without keys does nothing. `validate` is what the admin API runs (a SettingsError naming the field).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gateway.errors import SettingsError
from gateway.guardrails.categories import CATEGORIES

if TYPE_CHECKING:
    from gateway.guardrails.scanner import Rules

Action = Literal["flag", "redact", "block"]
ACTIONS: tuple[Action, ...] = ("flag", "redact", "block")
SIDES = ("prompt", "response")
PREFIXES = tuple(sorted({c.split(".", 1)[0] for c in CATEGORIES}))
RANK = {"flag": 0, "redact": 1, "block": 2}


def validate(value: Any, name: str = "guardrails") -> dict[str, dict[str, str]] | None:
    """The setting as stored (sides without keys dropped), or SettingsError naming the field at fault."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SettingsError(name, f'{name} must be {{"prompt": {{...}}, "response": {{...}}}} or null')
    out: dict[str, dict[str, str]] = {}
    for side, rules in value.items():
        if side not in SIDES:
            raise SettingsError(f"{name}.{side}", f"{name} has only prompt and response, not {side!r}")
        where = f"{name}.{side}"
        if not isinstance(rules, dict):
            raise SettingsError(where, f'{where} must map categories to actions, e.g. {{"pii.*": "redact"}}')
        for key, action in rules.items():
            if not _known(key):
                raise SettingsError(f"{where}.{key}", f"{where}: unknown category {key!r} (one of "
                                                      f"{', '.join(CATEGORIES)}, a prefix such as pii.* or *)")
            if action not in ACTIONS:
                raise SettingsError(f"{where}.{key}", f"{where}.{key} must be flag, redact or block")
        if rules:
            out[side] = dict(rules)
    return out or None


def _known(key: Any) -> bool:
    if not isinstance(key, str):
        return False
    return key == "*" or key in CATEGORIES or (key.endswith(".*") and key[:-2] in PREFIXES)


@dataclass(frozen=True)
class SidePolicy:
    """One side's resolved actions: category -> action, for the categories it looks for."""

    actions: tuple[tuple[str, Action], ...]

    def action(self, category: str) -> Action:
        return dict(self.actions)[category]

    def rules(self, *, stop: bool = True) -> Rules:
        """As the client's text is rewritten: redact and block replaced; with `stop`, block ends the text."""
        from gateway.guardrails.scanner import Rules  # the detectors' libraries load when text is first checked

        by = dict(self.actions)
        blocked = {c for c, a in by.items() if a == "block"}
        return Rules.of(set(by), {c for c, a in by.items() if a != "flag"}, blocked if stop else set())

    def log_rules(self) -> Rules:
        """As the log keeps the text: every category found replaced (a log row never holds a finding)."""
        from gateway.guardrails.scanner import Rules

        categories = {c for c, _ in self.actions}
        return Rules.of(categories, categories)

    @property
    def rewrites(self) -> bool:
        return any(a != "flag" for _, a in self.actions)

    @property
    def blocks(self) -> bool:
        return any(a == "block" for _, a in self.actions)

    def applied(self, found: dict[str, int] | set[str]) -> dict[str, str]:
        """What the log row says: each category found and the action applied to it."""
        by = dict(self.actions)
        return {c: by[c] for c in sorted(found) if c in by}


def resolve(rules: dict[str, str]) -> SidePolicy | None:
    """A side's keys resolved per category (None when it looks for nothing)."""
    return _resolve(tuple(sorted(rules.items())))


@functools.lru_cache(maxsize=1024)
def _resolve(items: tuple[tuple[str, str], ...]) -> SidePolicy | None:
    keys = dict(items)
    actions: list[tuple[str, Action]] = []
    for category in CATEGORIES:
        prefix = category.split(".", 1)[0] + ".*"
        action = keys.get(category, keys.get(prefix, keys.get("*")))
        if action in ACTIONS:
            actions.append((category, action))
    return SidePolicy(tuple(actions)) if actions else None


def side(setting: dict[str, Any] | None, name: str) -> SidePolicy | None:
    """The policy of one side (`prompt` or `response`) of a gateway's setting."""
    if not setting:
        return None
    rules = setting.get(name)
    return resolve(rules) if isinstance(rules, dict) and rules else None
