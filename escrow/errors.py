"""Errors the service raises on purpose, each naming the rule that was broken.

    EscrowError                       code
    ├── InvalidInput                  invalid_input
    │   ├── InvalidMoney              invalid_money
    │   ├── UnbalancedEntry           unbalanced_entry
    │   ├── InvalidCursor             invalid_cursor
    │   └── BeyondHoldMaximum         beyond_hold_maximum
    ├── Unauthenticated               unauthenticated
    ├── Forbidden                     forbidden
    ├── NotFound                      not_found
    ├── Conflict                      conflict
    │   ├── InsufficientFunds         insufficient_funds
    │   ├── IllegalTransition         illegal_transition
    │   ├── IdempotencyKeyInUse       idempotency_key_in_use
    │   ├── ExceedsEscrowedAmount     exceeds_escrowed_amount
    │   ├── ExceedsHeldAmount         exceeds_held_amount
    │   └── OrderConflict             order_conflict
    ├── IdempotencyKeyReused          idempotency_key_reused
    └── ConfigurationError            configuration_error   (start-up only, never HTTP)

`code` is stable: clients branch on it, so renaming one is a breaking change. The HTTP
status of each class lives in one table, `escrow.api.problems`. Foreign exceptions
(SQLAlchemy, httpx, pydantic) are translated where they are caught, never leaked.
"""

from __future__ import annotations

from typing import Any, ClassVar


class EscrowError(Exception):
    code: ClassVar[str] = "escrow_error"
    title: ClassVar[str] = "Request failed"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class InvalidInput(EscrowError):
    code = "invalid_input"
    title = "Invalid input"


class InvalidMoney(InvalidInput):
    code = "invalid_money"
    title = "Invalid amount"


class UnbalancedEntry(InvalidInput):
    code = "unbalanced_entry"
    title = "Journal entry does not balance"


class InvalidCursor(InvalidInput):
    code = "invalid_cursor"
    title = "Invalid pagination cursor"


class Unauthenticated(EscrowError):
    code = "unauthenticated"
    title = "Missing or invalid API key"


class Forbidden(EscrowError):
    code = "forbidden"
    title = "Role not allowed"


class NotFound(EscrowError):
    code = "not_found"
    title = "Not found"


class Conflict(EscrowError):
    code = "conflict"
    title = "Conflict with the current state"


class InsufficientFunds(Conflict):
    code = "insufficient_funds"
    title = "Account would go negative"


class IllegalTransition(Conflict):
    code = "illegal_transition"
    title = "Not allowed in the current state"


class IdempotencyKeyInUse(Conflict):
    code = "idempotency_key_in_use"
    title = "A request with this Idempotency-Key is still running"


class IdempotencyKeyReused(EscrowError):
    code = "idempotency_key_reused"
    title = "Idempotency-Key reused with a different request"


class ConfigurationError(EscrowError):
    code = "configuration_error"
    title = "Invalid configuration"


class ExceedsEscrowedAmount(Conflict):
    code = "exceeds_escrowed_amount"
    title = "More than the order has in escrow"


class ExceedsHeldAmount(Conflict):
    code = "exceeds_held_amount"
    title = "More than the hold ties down"


class OrderConflict(Conflict):
    code = "order_conflict"
    title = "An order with this id exists with different details"


class BeyondHoldMaximum(InvalidInput):
    code = "beyond_hold_maximum"
    title = "Deadline beyond the jurisdiction's maximum"
