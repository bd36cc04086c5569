"""Faults on demand: rules posted to `/control/faults`, and the documented magic inputs.

Two ways to make the simulator misbehave, because tests need both:

* a **rule** names an operation, a fault, how many times and with what probability; it is
  explicit and can target one instruction with `match`;
* a **magic input** (an amount's last two digits, an IBAN suffix) needs no set-up at all, so
  an end-to-end demo or a contract test can provoke a fault through the real API only.

Magic amount faults fire on the *first* receipt of an instruction only: a retry of the same
instruction is answered normally, which is exactly what a client must be able to rely on
to resolve an unknown outcome.
"""

from __future__ import annotations

import enum
import random
import threading
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FAULT_RULES_MAX = 100
REJECTED_IBAN_SUFFIX = "0000"


class Magic(enum.IntEnum):
    """Behaviour chosen by the last two digits of an amount in minor units."""

    SLOW = 91  # answer after `slow_s`, then normally
    OUT_OF_ORDER = 92  # bank: returned at settlement, return notified before booking;
    # card: a chargeback follows, notified before the refund's success
    DUPLICATE_CALLBACKS = 93  # every callback about it is delivered twice, same webhook-id
    RESPONSE_LOST = 94  # executed, then 504 at once
    TRANSIENT_5XX = 95  # 503 the first time, nothing executed; the retry succeeds
    RETURN = 96  # bank: returned (AC04) after `return_delay_s`; card: chargeback later
    FAIL_AT_SETTLEMENT = 97  # accepted, then fails when it would settle
    TIMEOUT_AFTER_BOOKING = 98  # executed, then sleeps `timeout_s` and answers 504


def amount_magic(amount_minor: int) -> Magic | None:
    """Return the magic behaviour of an amount (its last two digits), if any."""
    try:
        return Magic(amount_minor % 100)
    except ValueError:
        return None


Operation = Literal[
    "bank.credit_transfer",
    "bank.transfer_status",
    "bank.statement",
    "card.refund",
    "card.refund_status",
    "card.settlement_report",
    "bank.callback",
    "card.callback",
]
FaultKind = Literal[
    "error_5xx",
    "timeout",
    "slow",
    "response_lost",
    "timeout_after_booking",
    "drop_connection",
    "duplicate",
    "out_of_order",
]
CALLBACK_FAULTS = frozenset({"duplicate", "out_of_order"})
PRE_PROCESSING_FAULTS = frozenset({"error_5xx", "timeout", "slow"})
POST_PROCESSING_FAULTS = frozenset({"response_lost", "timeout_after_booking", "drop_connection"})


class FaultRule(BaseModel):
    """A fault to inject: which operation, what, how often, optionally for which key."""

    model_config = ConfigDict(extra="forbid")

    operation: Operation
    fault: FaultKind
    times: int | None = Field(default=1, ge=1, le=10_000, description="None: until removed")
    probability: float = Field(default=1.0, ge=0.0, le=1.0)
    status_code: int = Field(default=503, ge=500, le=599, description="for error_5xx")
    delay_s: float | None = Field(default=None, ge=0.0, le=600.0, description="for slow/timeout; default from config")
    match: str | None = Field(
        default=None,
        max_length=140,
        description="only when an EndToEndId, refund id or callback object id contains this",
    )

    @model_validator(mode="after")
    def _fault_fits_operation(self) -> FaultRule:
        is_callback = self.operation.endswith(".callback")
        if is_callback != (self.fault in CALLBACK_FAULTS):
            kind = "callback" if is_callback else "request"
            raise ValueError(f"fault {self.fault!r} does not apply to {kind} operation")
        return self


class ActiveFault(BaseModel):
    """A stored rule with its id and how often it fired."""

    id: str
    rule: FaultRule
    fired: int = 0
    remaining: int | None


class FaultBook:
    """The rules in force; `take` decides, under a lock, whether a rule fires now.

    Probabilities draw from a seeded `random.Random`, so a run with the same seed and the
    same requests injects the same faults.
    """

    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        # Not for security: a reproducible stream of fault decisions is the point.
        self._random = random.Random(seed)  # noqa: S311
        self._rules: list[ActiveFault] = []
        self._next_id = 1

    def add(self, rule: FaultRule) -> ActiveFault:
        """Store a rule; raises OverflowError past FAULT_RULES_MAX rules."""
        with self._lock:
            if len(self._rules) >= FAULT_RULES_MAX:
                raise OverflowError(f"at most {FAULT_RULES_MAX} fault rules")
            active = ActiveFault(id=f"flt_{self._next_id}", rule=rule, remaining=rule.times)
            self._next_id += 1
            self._rules.append(active)
            return active.model_copy()

    def list(self) -> list[ActiveFault]:
        """The rules still in force, oldest first."""
        with self._lock:
            return [r.model_copy() for r in self._rules]

    def remove(self, fault_id: str) -> bool:
        """Remove one rule; False if it was not there."""
        with self._lock:
            before = len(self._rules)
            self._rules = [r for r in self._rules if r.id != fault_id]
            return len(self._rules) != before

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    def take(self, operation: str, keys: tuple[str, ...], kinds: frozenset[str] | None = None) -> FaultRule | None:
        """Return the first rule for `operation` (and `kinds`) that fires now, counting it.

        A rule with `match` only applies when one of `keys` contains it. A rule is dropped
        when its `times` are used up.
        """
        with self._lock:
            for active in self._rules:
                rule = active.rule
                if rule.operation != operation:
                    continue
                if kinds is not None and rule.fault not in kinds:
                    continue
                if rule.match is not None and not any(rule.match in key for key in keys):
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                active.fired += 1
                if active.remaining is not None:
                    active.remaining -= 1
                    if active.remaining == 0:
                        self._rules.remove(active)
                return rule
            return None
