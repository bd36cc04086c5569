"""The screening port used by order intake, and the decision it returns.

Order intake asks a `Screener` whether a paid order matches any infringement finding. The
implementation behind it (the live findings matcher, or `PassScreener` where no findings
exist) is chosen in bootstrap; intake only sees this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Decision = Literal["pass", "hold", "review"]


@dataclass(frozen=True, slots=True)
class Screening:
    """What screening decided, and why (every match names finding, pattern and span).

    `hold_finding_ids` are confirmed findings (hold until the jurisdiction's maximum);
    `review_finding_ids` are suspected ones (hold with the short review deadline).
    """

    decision: Decision
    matches: tuple[dict[str, Any], ...] = ()
    hold_finding_ids: tuple[str, ...] = ()
    review_finding_ids: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"decision": self.decision, "matches": list(self.matches)}


class Screener(Protocol):
    def screen(self, title: str, seller_id: str | None, listing_id: str | None) -> Screening:
        """Screen one order; must be fast (it sits in the checkout's critical path)."""
        ...


class PassScreener:
    """No findings: every order passes."""

    def screen(self, title: str, seller_id: str | None, listing_id: str | None) -> Screening:
        return Screening("pass")
