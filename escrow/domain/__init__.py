"""Decisions about orders and holds: pure functions, no I/O."""
