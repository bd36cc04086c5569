"""Screening of order titles, sellers and listings against infringement findings.

The public surface the service calls; see `matcher` for why it works the way it does and
`normaliser` for what counts as the same spelling.
"""

from escrow.screening.matcher import FindingRule, InvalidFinding, Match, Matcher
from escrow.screening.normaliser import InvalidPattern, Normalised, normalise, validate_pattern

__all__ = [
    "FindingRule",
    "InvalidFinding",
    "InvalidPattern",
    "Match",
    "Matcher",
    "Normalised",
    "normalise",
    "validate_pattern",
]
