"""Typed wrapper around pyahocorasick, the one place that touches the untyped C extension.

Why pyahocorasick: one Aho-Corasick automaton scans a title in time linear in the title,
whatever the number of patterns, which is what keeps screening flat from 10k to 1M findings.
Why integer values (`STORE_INTS`): the trie then holds no Python objects, so it costs about
40 bytes per trie node instead of a reference per pattern, and a process that forks after
building it (a pre-loading server) shares its pages copy-on-write, because scanning never
writes reference counts into them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import ahocorasick  # type: ignore[import-not-found]  # C extension without stubs; wrapped here

_MISSING: Final = -1


def _no_objects(value: bytes) -> object:
    """Deserializer `ahocorasick.load` demands even for integer values; it is never called."""
    raise TypeError(f"integer automata store no objects, got {type(value).__name__}")


class KeywordAutomaton:
    """Keys are canonical texts, values non-negative integers chosen by the caller."""

    __slots__ = ("_automaton", "_ready")

    def __init__(self) -> None:
        self._automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        self._ready = False

    def add(self, key: str, value: int) -> None:
        """Add or replace `key`. Raises RuntimeError once `finalise` has run."""
        if self._ready:
            raise RuntimeError("the automaton is finalised; build a new one")
        self._automaton.add_word(key, value)

    def get(self, key: str) -> int | None:
        """The value of exactly `key`, or None."""
        value: int = self._automaton.get(key, _MISSING)
        return None if value == _MISSING else value

    def finalise(self) -> None:
        """Compute the failure links; needed before `scan`, even with no keys."""
        if len(self._automaton) > 0:
            self._automaton.make_automaton()
        self._ready = True

    def scan(self, text: str) -> Iterator[tuple[int, int]]:
        """Every `(end_inclusive, value)` of every key occurring in `text`, overlaps included."""
        if not self._ready:
            raise RuntimeError("finalise the automaton before scanning")
        if len(self._automaton) == 0:
            return iter(())
        found: Iterator[tuple[int, int]] = self._automaton.iter(text)
        return found

    def __len__(self) -> int:
        count: int = len(self._automaton)
        return count

    def save(self, path: Path) -> None:
        """Write the finalised automaton to `path` (pyahocorasick's own binary format)."""
        if not self._ready:
            raise RuntimeError("finalise the automaton before saving it")
        self._automaton.save(str(path))  # integer values need no serializer

    @classmethod
    def load(cls, path: Path) -> KeywordAutomaton:
        """Read an automaton written by `save` (no Python objects to unpickle)."""
        loaded = cls()
        loaded._automaton = ahocorasick.load(str(path), _no_objects)
        loaded._ready = True
        return loaded
