"""The categories the detectors find (gateway/guardrails/detectors.py has one detector for each). Kept apart so that
validating a setting does not load the detectors' libraries."""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = (
    "pii.card", "pii.email", "pii.iban", "pii.ip", "pii.phone", "pii.ssn",
    "secret.aws", "secret.github", "secret.jwt", "secret.private_key", "secret.provider_key", "secret.slack",
)
