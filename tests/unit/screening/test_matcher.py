# ruff: noqa: RUF001  # look-alike characters are this module's subject
"""Matching: boundaries, coded language, verification after a hit, ids, build validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from escrow.screening import FindingRule, InvalidFinding, Matcher
from escrow.screening.automaton import KeywordAutomaton


def keyword(brand: str, *patterns: str, finding_id: str = "", status: str = "confirmed") -> FindingRule:
    return FindingRule(finding_id or f"fnd_{brand.lower()}", "keyword", brand, status, patterns)


BRANDS = Matcher.build(
    [
        keyword("Gucci", "gucci"),
        keyword("Canon", "canon", "canon eos"),
        keyword("Louis Vuitton", "louis vuitton"),
        keyword("Chanel", "chanel"),
        keyword("Bali", "bali"),
        keyword("Hugo Boss", "boss"),
        keyword("Nike", "air jordan"),
        keyword("Counterfeit indicator", "1:1", "1比1", "高仿", "A货", "super copy"),
    ]
)


def brands(title: str) -> set[str]:
    return {m.brand for m in BRANDS.screen(title)}


class TestMatcherSpellings:
    @pytest.mark.parametrize(
        ("title", "brand"),
        [
            ("ｇｕｃｃｉ belt", "Gucci"),
            ("Ro\u200dlex? no: gu\u200dcci", "Gucci"),
            ("ɡuссі wallet", "Gucci"),  # Latin script g, Cyrillic c and i
            ("L0uis V.u1tton bag", "Louis Vuitton"),
            ("louisvuitton bag", "Louis Vuitton"),
            ("l o u i s v u i t t o n", "Louis Vuitton"),
            ("Louis Vuittón", "Louis Vuitton"),
            ("G.u.c.c.i", "Gucci"),
            ("G u c c i shoes", "Gucci"),
            ("G-u-c-c-i", "Gucci"),
            ("GUCCI!!!", "Gucci"),
            ("正品高仿包包", "Counterfeit indicator"),
            ("１比１ watch", "Counterfeit indicator"),
            ("1 : 1 watch", "Counterfeit indicator"),
            ("ch@nel", "Chanel"),
            ("chnel bag", "Chanel"),  # one inner letter missing from a long brand word
            ("louis vitton", "Louis Vuitton"),
        ],
    )
    def test_disguised_title_matches(self, title: str, brand: str) -> None:
        """The disguised spelling of a pattern is found."""
        assert brand in brands(title)

    @pytest.mark.parametrize(
        "title",
        [
            "Gucciardi family cookbook",  # word boundary at the end
            "Canonical Ubuntu sticker",
            "Louisville Slugger bat",
            "tin can on a shelf",  # a real space never joins two words
            "Channel 4 remote",  # an added letter is another word
            "Super cozy blanket",  # a changed letter too
            "Scale 1:10 model",  # digit boundary
            "1比10 scale",
            "11:1 ratio",
            "Model 8055 spare part",  # digits alone do not spell `boss`
            "Basketball hoop",
            "ball",  # a real l is not the i of `bali`
            "Chane bag",  # a missing last letter is not tolerated
            "i:i",  # `1:1` is written with digits
        ],
    )
    def test_honest_title_does_not_match(self, title: str) -> None:
        """Look-alike honest titles match nothing they should not."""
        assert brands(title) == set()

    def test_offsets_cover_the_original_spelling(self) -> None:
        """`matched` is the original text between `start` and `end`, disguise included."""
        title = "Sale: Ｌ0uis V.u1tton\u200b bag R()"
        [match] = BRANDS.screen(title)
        assert match.matched == "Ｌ0uis V.u1tton"
        assert title[match.start : match.end] == match.matched

    def test_parenthesis_o_is_inside_the_span(self) -> None:
        """A match ending in `()` covers the closing parenthesis."""
        matcher = Matcher.build([keyword("Moncler", "monclo")])
        [match] = matcher.screen("new monc1()")
        assert match.matched == "monc1()"

    def test_shared_pattern_matches_every_finding(self) -> None:
        """Two findings with the same pattern both match."""
        matcher = Matcher.build(
            [
                keyword("Gucci", "gucci", finding_id="fnd_a"),
                keyword("Gucci", "GUCCI", finding_id="fnd_b"),
            ]
        )
        found = matcher.screen("gucci bag")
        assert {(m.finding_id, m.pattern) for m in found} == {
            ("fnd_a", "gucci"),
            ("fnd_b", "GUCCI"),
        }

    def test_multi_word_pattern_and_its_prefix_both_report(self) -> None:
        """Overlapping patterns of one finding are all reported."""
        found = BRANDS.screen("canon eos body")
        assert {m.pattern for m in found} == {"canon", "canon eos"}


class TestMatcherIds:
    def test_seller_and_listing_findings_match_exactly(self) -> None:
        """Seller and listing ids match by equality, with a zero span."""
        matcher = Matcher.build(
            [
                FindingRule("fnd_s", "seller", "Rolex", "suspected", seller_ids=("s1",)),
                FindingRule("fnd_l", "listing", "Rolex", "confirmed", listing_ids=("l9",)),
            ]
        )
        found = matcher.screen("anything", seller_id="s1", listing_id="l9")
        assert [(m.finding_id, m.kind, m.pattern, m.matched, m.start, m.end) for m in found] == [
            ("fnd_l", "listing", "l9", "l9", 0, 0),
            ("fnd_s", "seller", "s1", "s1", 0, 0),
        ]
        assert matcher.screen("anything", seller_id="s2", listing_id="l1") == []
        assert matcher.pattern_count == 0


class TestMatcherBuild:
    @pytest.mark.parametrize(
        "rule",
        [
            keyword("X", "ok", "\u200b"),
            keyword("X"),
            FindingRule("fnd_x", "keyword", "X", "dismissed", ("gucci",)),
            FindingRule("fnd_x", "brand", "X", "confirmed", ("gucci",)),
            FindingRule("fnd_x", "seller", "X", "confirmed", ("gucci",), seller_ids=("s",)),
            FindingRule("", "keyword", "X", "confirmed", ("gucci",)),
        ],
    )
    def test_invalid_rule_is_rejected_with_its_id(self, rule: FindingRule) -> None:
        """A rule the matcher cannot honour raises a ValueError naming the finding."""
        with pytest.raises(InvalidFinding, match="finding"):
            Matcher.build([rule])


class TestMatcherProperties:
    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.sampled_from(["gucci", "G.u.c.c.i", "1:1", "高仿", " ", "x", "Ro\u200dlex", "()", "!"]))
        .map("".join)
        .filter(lambda t: len(t) <= 1000),
        st.text(max_size=40),
    )
    def test_matched_text_is_the_title_slice(self, core: str, noise: str) -> None:
        """Every match lies inside the title and `matched == title[start:end]`."""
        title = noise + core + noise
        for match in BRANDS.screen(title):
            assert 0 <= match.start < match.end <= len(title)
            assert match.matched == title[match.start : match.end]


class TestPatternProfile:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.from_regex(r"[a-z0-9]{1,8}", fullmatch=True), min_size=1, max_size=4))
    def test_plain_pattern_shortcut_agrees_with_normalisation(self, words: list[str]) -> None:
        """The shortcut for plain ASCII patterns gives what full normalisation gives."""
        from escrow.screening.matcher import _profile, _simple_profile

        pattern = " ".join(words)
        _profile.cache_clear()
        general = _profile.__wrapped__(pattern + "\u200b")  # a ZWSP forces the general path
        assert _simple_profile(words) == general


class TestKeywordAutomaton:
    def test_save_and_load_round_trip(self, tmp_path: Path) -> None:
        """A saved automaton loads with the same keys, values and scan results."""
        automaton = KeywordAutomaton()
        automaton.add("gucci", 7)
        automaton.add("l:l", 9)
        automaton.finalise()
        automaton.save(tmp_path / "keywords.bin")
        loaded = KeywordAutomaton.load(tmp_path / "keywords.bin")
        assert loaded.get("gucci") == 7
        assert list(loaded.scan("xgucci l:l")) == list(automaton.scan("xgucci l:l"))
