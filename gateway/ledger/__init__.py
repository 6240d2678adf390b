"""The double-entry credit ledger (TigerBeetle's model in Postgres). Knows nothing of HTTP."""

from gateway.errors import LedgerError, LedgerReason
from gateway.ledger.ledger import (
    AutoTopUp,
    Balance,
    HoldRefusal,
    HoldResult,
    Ledger,
    SpendingLimit,
    StatementRow,
)
from gateway.ledger.payments import AutoTopUps, Charge, PaymentMethod, ReceivablePaymentMethod

__all__ = [
    "AutoTopUp",
    "AutoTopUps",
    "Balance",
    "Charge",
    "HoldRefusal",
    "HoldResult",
    "Ledger",
    "LedgerError",
    "LedgerReason",
    "PaymentMethod",
    "ReceivablePaymentMethod",
    "SpendingLimit",
    "StatementRow",
]
