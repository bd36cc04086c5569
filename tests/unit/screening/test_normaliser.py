# ruff: noqa: RUF001  # look-alike characters are this module's subject
"""Each normalisation rule, and the offset map back to the original title."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from escrow.screening import InvalidPattern, normalise, validate_pattern
from escrow.screening.limits import PATTERN_CHARS_MAX, TITLE_CHARS_MAX


def same(a: str, b: str) -> bool:
    return normalise(a).text == normalise(b).text


class TestNormalise:
    @pytest.mark.parametrize(
        ("disguised", "plain"),
        [
            ("ｇｕｃｃｉ", "gucci"),  # fullwidth
            ("Ro\u200dlex", "rolex"),  # zero-width joiner
            ("ro\u200bl\ufeffe\xadx\u2060", "rolex"),  # ZWSP, BOM, soft hyphen, word joiner
            ("гоӏех", "rolex"),  # Cyrillic look-alikes
            ("ρrаdа", "prada"),  # Greek rho, Cyrillic a
            ("ΚΕLLY", "kelly"),  # Greek capitals
            ("hérmès", "hermes"),  # accents
            ("𝐆𝐮𝐜𝐜𝐢", "gucci"),  # mathematical bold
            ("r0l3x", "rolex"),  # leet digits
            ("ch@nel", "chanel"),  # leet symbols
            ("$uper", "super"),
            ("R()LEX", "rolex"),  # parentheses for o
            ("b!rkin", "birkin"),  # ! for i
            ("a1rpods", "airpods"),  # 1 for i
            ("ro1ex", "rolex"),  # 1 for l
            ("G.u.c.c.i", "gucci"),  # dotted
            ("G u c c i", "gucci"),  # spaced
            ("G-u-c-c-i", "gucci"),  # dashed
            ("g_u_c_c_i", "gucci"),
            ("louis \t\u3000 vuitton", "louis vuitton"),  # runs of whitespace
        ],
    )
    def test_disguise_normalises_like_the_plain_spelling(self, disguised: str, plain: str) -> None:
        """A disguised spelling has the same canonical text as the plain one."""
        assert same(disguised, plain)

    def test_gucci_exclamation_is_punctuation_after_a_word(self) -> None:
        """`Gucci!!` ends the word instead of adding letters to it."""
        assert normalise("Gucci!! bag").words == ("guccl", "bag")

    def test_cjk_characters_are_words_of_their_own(self) -> None:
        """Every ideograph is a word, so CJK patterns match as substrings."""
        assert normalise("这是高仿的包").bounds == frozenset(range(7))

    def test_real_space_between_words_is_hard(self) -> None:
        """`can on` has a hard boundary where `c a n o n` has none."""
        assert normalise("tin can on").hard_bounds() == frozenset({3, 6})
        assert normalise("c a n o n").hard_bounds() == frozenset()

    def test_offsets_point_at_the_source_characters(self) -> None:
        """Each canonical character maps to the source character it came from."""
        title = "ｇ\u200bu-c()i"
        normalised = normalise(title)
        assert normalised.text == "gucol"
        assert [title[i] for i in normalised.offsets()] == ["ｇ", "u", "c", "(", "i"]

    def test_expanding_characters_keep_offsets(self) -> None:
        """`ß` becomes two characters that both point at it."""
        normalised = normalise("straße ok")
        assert normalised.text == "strasseok"
        assert normalised.offsets()[4:6] == [4, 4]

    def test_over_long_title_is_rejected(self) -> None:
        """A title above TITLE_CHARS_MAX raises instead of being screened in part."""
        with pytest.raises(ValueError, match="more than"):
            normalise("a" * (TITLE_CHARS_MAX + 1))


class TestValidatePattern:
    @pytest.mark.parametrize("pattern", ["", "   ", "\u200b\u200d", "-", "a", "!!", "(", "I"])
    def test_too_short_pattern_is_rejected(self, pattern: str) -> None:
        """A pattern that normalises to fewer than 2 characters raises with a reason."""
        with pytest.raises(InvalidPattern, match="normalises to"):
            validate_pattern(pattern)

    def test_too_long_pattern_is_rejected(self) -> None:
        """A pattern above PATTERN_CHARS_MAX raises."""
        with pytest.raises(ValueError, match="more than"):
            validate_pattern("x" * (PATTERN_CHARS_MAX + 1))

    def test_valid_pattern_returns_its_canonical_text(self) -> None:
        """`1:1` and `L0uis V.u1tton` are valid and come back canonical."""
        assert validate_pattern("1:1") == "l:l"
        assert validate_pattern("L0uis V.u1tton") == normalise("louis vuitton").text


class TestNormaliseProperties:
    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=120))
    def test_idempotent_on_its_output(self, text: str) -> None:
        """Normalising canonical text changes nothing."""
        once = normalise(text).text
        assert normalise(once).text == once

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=120))
    def test_offsets_are_within_the_title_and_increasing(self, text: str) -> None:
        """Every canonical character maps inside the source, in order."""
        offsets = normalise(text).offsets()
        assert len(offsets) == len(normalise(text).text)
        assert all(0 <= o < len(text) for o in offsets)
        assert offsets == sorted(offsets)
