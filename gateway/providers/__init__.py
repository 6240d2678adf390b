"""Providers: one module per wire format, the router that forwards calls, and compat translation.

Providers report usage; they never bill (the limits and the ledger do)."""
