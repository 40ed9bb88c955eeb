"""SMS segment counting and cutting: GSM-7 vs UCS-2, extension characters, surrogate pairs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifiers.sms_text import (
    GSM7_BASIC,
    GSM7_EXTENDED,
    Encoding,
    count_segments,
    fit_keeping_head,
    fit_segments,
)

gsm_basic = st.text(alphabet=sorted(GSM7_BASIC), max_size=800)
gsm_any = st.text(alphabet=sorted(GSM7_BASIC | GSM7_EXTENDED), max_size=800)
bmp_non_gsm = st.characters(min_codepoint=0x0400, max_codepoint=0x04FF)  # Cyrillic
ucs2_bmp = st.text(alphabet=bmp_non_gsm, min_size=1, max_size=500)


def test_single_gsm_segment_holds_160_characters() -> None:
    """160 plain characters are one SMS; the 161st makes two parts of 153."""
    assert count_segments("a" * 160) == (Encoding.GSM7, 1)
    assert count_segments("a" * 161) == (Encoding.GSM7, 2)
    assert count_segments("a" * 306) == (Encoding.GSM7, 2)
    assert count_segments("a" * 307) == (Encoding.GSM7, 3)


def test_extension_characters_cost_two_septets() -> None:
    """Braces and the euro sign are escape sequences: 80 of them fill one SMS."""
    assert count_segments("{" * 80) == (Encoding.GSM7, 1)
    assert count_segments("€" * 81) == (Encoding.GSM7, 2)


def test_escape_sequence_is_not_split_across_parts() -> None:
    """152 plain characters then a brace: the brace moves whole into the second part."""
    text = "a" * 152 + "[" + "b" * 152
    # 152 + 2 would overflow part one (153), so part two holds 2 + 152 = 154 > 153: three parts.
    assert count_segments(text) == (Encoding.GSM7, 3)


def test_one_non_gsm_character_switches_to_ucs2() -> None:
    """A single curly quote turns the whole message into UCS-2 with 70 per SMS."""
    assert count_segments("a" * 69 + "\u2019") == (Encoding.UCS2, 1)
    assert count_segments("a" * 70 + "\u2019") == (Encoding.UCS2, 2)


def test_emoji_counts_as_surrogate_pair() -> None:
    """Characters beyond the BMP take two UTF-16 units: 35 emoji fill one SMS."""
    assert count_segments("\U0001f525" * 35) == (Encoding.UCS2, 1)
    assert count_segments("\U0001f525" * 36) == (Encoding.UCS2, 2)


def test_surrogate_pair_is_not_split_across_parts() -> None:
    """66 units then an emoji: the emoji does not fit the 67-unit part, so it starts the next."""
    # 134 units would be exactly two parts by division; greedy packing needs three.
    text = "\u0416" * 66 + "\U0001f525" + "\u0416" * 66
    assert count_segments(text) == (Encoding.UCS2, 3)


def test_empty_text_is_one_segment() -> None:
    """An empty body still costs one message."""
    assert count_segments("") == (Encoding.GSM7, 1)


def test_fit_keeps_gsm_text_gsm() -> None:
    """Cutting a GSM text uses three dots, not U+2026, which would force UCS-2."""
    cut = fit_segments("x" * 400, 1)
    assert cut == "x" * 157 + "..."
    assert count_segments(cut) == (Encoding.GSM7, 1)


def test_fit_does_not_split_emoji_modifier() -> None:
    """A skin-tone modifier stays with its base emoji or both go."""
    text = "\U0001f44d\U0001f3fd" * 40
    cut = fit_segments(text, 1)
    assert not cut.removesuffix("\u2026").endswith("\U0001f44d")
    assert count_segments(cut)[1] == 1


def test_fit_rejects_zero_budget() -> None:
    """A budget below one segment is a programming error."""
    with pytest.raises(ValueError, match="at least 1"):
        fit_segments("hi", 0)


@given(gsm_basic)
def test_gsm_basic_count_matches_formula(text: str) -> None:
    """For plain GSM text the greedy count equals the textbook formula."""
    expected = 1 if len(text) <= 160 else math.ceil(len(text) / 153)
    assert count_segments(text) == (Encoding.GSM7, expected)


@given(ucs2_bmp)
def test_ucs2_bmp_count_matches_formula(text: str) -> None:
    """For BMP-only UCS-2 text the greedy count equals the textbook formula."""
    expected = 1 if len(text) <= 70 else math.ceil(len(text) / 67)
    assert count_segments(text) == (Encoding.UCS2, expected)


@given(gsm_any)
def test_gsm_with_extensions_stays_gsm(text: str) -> None:
    """Extension characters never change the encoding."""
    assert count_segments(text)[0] is Encoding.GSM7


@given(st.text(max_size=1200), st.integers(min_value=1, max_value=6))
def test_fit_respects_budget_and_keeps_a_prefix(text: str, budget: int) -> None:
    """The result fits, is the text itself when it fitted, else a prefix plus an ellipsis."""
    cut = fit_segments(text, budget)
    assert count_segments(cut)[1] <= budget
    if count_segments(text)[1] <= budget:
        assert cut == text
    else:
        stem = cut.removesuffix("...").removesuffix("\u2026")
        assert stem != cut
        assert text.startswith(stem)
    # Always encodable: no lone surrogate was produced.
    cut.encode("utf-16")


@given(st.text(max_size=600), st.text(max_size=50))
def test_segments_grow_with_text(text: str, more: str) -> None:
    """Appending text never makes a message cheaper (the cut's binary search relies on it)."""
    assert count_segments(text + more)[1] >= count_segments(text)[1]


def test_the_first_two_lines_survive_a_long_ucs2_title() -> None:
    """One UCS-2 SMS holds 70 units: a long non-GSM title is shortened, not "Reply ACK"."""
    title = (
        "[P1] #12 Festplatte fast voll auf db-1 \u2013 Schreibzugriffe scheitern bald, "
        "bitte handeln"
    )
    text = f"{title}\nReply ACK 12\navailability, since 09:00 UTC\nDisk /var is 95% full"
    cut = fit_keeping_head(text, 1)
    assert count_segments(cut) == (Encoding.UCS2, 1)
    first, second = cut.split("\n")
    assert second == "Reply ACK 12"
    assert first.endswith("\u2026")
    assert title.startswith(first.removesuffix("\u2026"))
    assert fit_segments(text, 1).count("Reply ACK") == 0  # what a plain cut did


def test_room_left_after_the_head_is_filled() -> None:
    text = "Short title\nReply ACK 1\n" + "details " * 50
    cut = fit_keeping_head(text, 1)
    assert cut.startswith("Short title\nReply ACK 1\ndetails")
    assert count_segments(cut)[1] == 1
    assert fit_keeping_head("one line only " * 30, 1) == fit_segments("one line only " * 30, 1)


@given(st.text(max_size=600), st.integers(min_value=1, max_value=3))
def test_keeping_the_head_always_fits(text: str, budget: int) -> None:
    cut = fit_keeping_head(text, budget)
    assert count_segments(cut)[1] <= budget
    if count_segments(text)[1] <= budget:
        assert cut == text
    cut.encode("utf-16")
