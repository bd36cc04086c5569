"""A card acquirer reached over its JSON API: refunds, statuses, webhooks, settlement report."""

from adapters.card.acquirer.client import AcquirerCardRail

__all__ = ["AcquirerCardRail"]
