"""The sample of real traffic in shared/data/screening_cases.json, screened end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from escrow.screening import FindingRule, Matcher

CASES_PATH = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "screening_cases.json"
RECALL_MIN = 0.98


class TestScreeningCasesFile:
    def test_recall_and_no_false_positives(self) -> None:
        """Positive cases reach RECALL_MIN recall; negatives and extra brands never match."""
        if not CASES_PATH.is_file():
            pytest.skip(f"screening cases not found at {CASES_PATH} (shared data is not checked in)")
        data = json.loads(CASES_PATH.read_text(encoding="utf-8"))
        rules = [
            FindingRule(f"fnd_case{i}", "keyword", f["brand"], "confirmed", tuple(f["patterns"]))
            for i, f in enumerate(data["findings"])
        ]
        matcher = Matcher.build(rules)
        positives = recalled = 0
        missed: list[str] = []
        false_positives: list[tuple[str, set[str]]] = []
        for case in data["cases"]:
            title, expected = case["title"], set(case["expect"])
            matches = matcher.screen(title)
            assert all(m.matched == title[m.start : m.end] for m in matches), title
            brands = {m.brand for m in matches}
            if brands - expected:
                false_positives.append((title, brands - expected))
            if expected:
                positives += 1
                if expected <= brands:
                    recalled += 1
                else:
                    missed.append(title)
        recall = recalled / positives
        print(
            f"\nscreening cases: recall {recalled}/{positives} = {recall:.4f}, "
            f"false positives {len(false_positives)}, missed {missed!r}"
        )
        assert false_positives == []
        assert recall >= RECALL_MIN, missed
