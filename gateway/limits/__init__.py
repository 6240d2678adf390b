"""Strict spend limits: rules, bucket keys, windows and reservations (SPEC §5, DESIGN "Spend limits")."""
