from __future__ import annotations

import pytest

from gateway.limits.policies import Policy, allowed, validate_policy

INTERNS = Policy("1", "interns", ("custom-*/*", "groq/*"))


@pytest.mark.parametrize(
    ("groups", "model", "ok"),
    [
        (["interns"], "groq/llama-3.3-70b", True),
        (["interns"], "custom-vllm/qwen", True),
        (["interns"], "anthropic/claude-opus-4.7", False),
        (["interns", "staff"], "anthropic/claude-opus-4.7", True),  # staff has no policy: unrestricted
        ([], "anthropic/claude-opus-4.7", True),  # no identity and no "*" policy
    ],
)
def test_group_policies(groups: list[str], model: str, ok: bool) -> None:
    assert allowed([INTERNS], groups, model) is ok


def test_default_policy_governs_requests_without_groups() -> None:
    default = Policy("2", "*", ("groq/*",))
    assert allowed([INTERNS, default], [], "groq/x")
    assert not allowed([INTERNS, default], [], "openai/gpt-5")


def test_no_policies_restrict_nobody() -> None:
    assert allowed([], ["interns"], "openai/gpt-5")


@pytest.mark.parametrize(
    ("data", "field"),
    [([], "policy"), ({"models": ["a/b"]}, "group"), ({"group": "g", "models": ["nomodel"]}, "models"),
     ({"group": "g", "models": ["a/b"], "x": 1}, "x")],
)
def test_invalid_policies(data: object, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}:"):
        validate_policy(data)
