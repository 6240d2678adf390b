"""Strict spend limits: rules, bucket keys, windows and reservations (README, "Spend limits")."""
