"""Identity policies: which models a gateway's IdP groups may call.

A policy maps one group to model patterns with shell-style wildcards on `{provider}/{model}`
(`"custom-*/*"`, `"groq/*"`). Decided where the spec is silent:
- a gateway without policies restricts nobody;
- a group without a policy is unrestricted, so a request is allowed when *any* of its groups allows the model;
- a request with no groups (no identity, or a service token) is governed by the policy of the group `*`
  when the gateway has one, and unrestricted otherwise.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import PolicyError


@dataclass(frozen=True)
class Policy:
    id: str
    group: str
    models: tuple[str, ...]

    def allows(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


def allowed(policies: Iterable[Policy], groups: Iterable[str], model: str) -> bool:
    by_group: dict[str, list[Policy]] = {}
    for policy in policies:
        by_group.setdefault(policy.group, []).append(policy)
    if not by_group:
        return True
    groups = list(groups)
    if not groups:
        default = by_group.get("*")
        return default is None or any(p.allows(model) for p in default)
    for group in groups:
        mine = by_group.get(group)
        if mine is None or any(p.allows(model) for p in mine):
            return True
    return False


def validate_policy(data: object) -> tuple[str, tuple[str, ...]]:
    """Admin input -> (group, patterns). Raises PolicyError naming the field."""
    if not isinstance(data, dict):
        raise PolicyError("policy", "must be an object {\"group\", \"models\"}")
    group, models = data.get("group"), data.get("models")
    if not isinstance(group, str) or not group or len(group) > 200:
        raise PolicyError("group", "must be a non-empty string")
    if (not isinstance(models, list) or not models or len(models) > 100
            or not all(isinstance(m, str) and "/" in m for m in models)):
        raise PolicyError("models", 'must be a non-empty list of "provider/model" patterns')
    extra = set(data) - {"group", "models"}
    if extra:
        raise PolicyError(sorted(extra)[0], "unknown field")
    return group, tuple(models)
