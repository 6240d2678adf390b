"""Spendgate: a self-hostable AI gateway with strict spend limits and a double-entry credit ledger."""

__version__ = "0.1.0"
