"""Card rail adapters (implementations of `escrow.ports.CardRail`)."""
