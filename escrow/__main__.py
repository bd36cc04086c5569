"""`python -m escrow` is the `escrow` command."""

from escrow.cli import main

main()
