"""Bank rail adapters (implementations of `escrow.ports.BankRail`)."""
