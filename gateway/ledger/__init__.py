"""The double-entry credit ledger (TigerBeetle's model in Postgres). Knows nothing of HTTP."""

from gateway.ledger.ledger import (
    AutoTopUp,
    Balance,
    HoldResult,
    Ledger,
    LedgerError,
    SpendingLimit,
    StatementRow,
)
from gateway.ledger.payments import AutoTopUps, Charge, PaymentMethod, ReceivablePaymentMethod

__all__ = [
    "AutoTopUp",
    "AutoTopUps",
    "Balance",
    "Charge",
    "HoldResult",
    "Ledger",
    "LedgerError",
    "PaymentMethod",
    "ReceivablePaymentMethod",
    "SpendingLimit",
    "StatementRow",
]
