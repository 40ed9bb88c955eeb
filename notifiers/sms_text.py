"""SMS length accounting: how many segments a text costs, and how to cut it to a budget.

A text that uses only the GSM 03.38 alphabet travels as 7-bit septets (160 per single SMS,
153 per part of a concatenated one, because the 6-byte UDH header eats 7 septets); characters of
the GSM extension table (``{ } [ ] ~ \\ | ^ €`` and form feed) cost two septets (escape + char).
Any other character switches the whole message to UCS-2: 70 UTF-16 code units per single SMS,
67 per part. Carriers never split an escape sequence or a surrogate pair across two parts, so
parts are filled greedily rather than by plain division. Segments are what providers bill and
rate-limit (about one segment per second per long code), so paging budgets count them.
"""

from __future__ import annotations

import unicodedata
from enum import StrEnum

# GSM 03.38 basic character set, minus the escape (0x1B) that only introduces the extension table.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# The extension table: each costs two septets.
GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE = 160
GSM7_PART = 153
UCS2_SINGLE = 70
UCS2_PART = 67

# Ellipses used when a text is cut: "..." keeps a GSM-7 text in GSM-7 (U+2026 is not in the
# GSM alphabet and would silently turn a 160-character SMS into a 70-character one).
GSM7_ELLIPSIS = "..."
UCS2_ELLIPSIS = "\u2026"


class Encoding(StrEnum):
    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


def is_gsm7(text: str) -> bool:
    """True when every character of ``text`` is in the GSM-7 basic or extension table."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text)


def _units(ch: str, encoding: Encoding) -> int:
    if encoding is Encoding.GSM7:
        return 2 if ch in GSM7_EXTENDED else 1
    # UTF-16 code units: characters beyond the BMP are a surrogate pair.
    return 2 if ord(ch) > 0xFFFF else 1


def _count(text: str, encoding: Encoding) -> int:
    single, part = (
        (GSM7_SINGLE, GSM7_PART) if encoding is Encoding.GSM7 else (UCS2_SINGLE, UCS2_PART)
    )
    units = [_units(ch, encoding) for ch in text]
    if sum(units) <= single:
        return 1
    segments = 1
    used = 0
    for size in units:
        # A two-unit character (escape sequence or surrogate pair) never straddles two parts.
        if used + size > part:
            segments += 1
            used = 0
        used += size
    return segments


def count_segments(text: str) -> tuple[Encoding, int]:
    """The encoding a text travels in and how many SMS segments it takes (at least one)."""
    encoding = Encoding.GSM7 if is_gsm7(text) else Encoding.UCS2
    return encoding, _count(text, encoding)


def _clean_cut(text: str, end: int) -> int:
    """Move a cut point left so that it does not separate a character from what modifies it."""
    while end > 0:
        after = text[end] if end < len(text) else ""
        before = text[end - 1]
        splits_cluster = bool(after) and (
            unicodedata.combining(after) != 0
            or "\ufe00" <= after <= "\ufe0f"  # variation selectors (emoji vs text style)
            or "\U0001f3fb" <= after <= "\U0001f3ff"  # skin-tone modifiers
            or after == "\u200d"
        )
        if before == "\u200d" or splits_cluster:
            end -= 1
            continue
        break
    return end


def fit_segments(text: str, max_segments: int) -> str:
    """``text`` unchanged if it fits in ``max_segments``, else its longest fitting prefix plus
    an ellipsis. Python strings hold code points, so a cut never splits a surrogate pair; it
    also avoids splitting a base character from its combining marks or emoji modifiers."""
    if max_segments < 1:
        raise ValueError("max_segments must be at least 1")
    encoding, segments = count_segments(text)
    if segments <= max_segments:
        return text
    ellipsis = GSM7_ELLIPSIS if encoding is Encoding.GSM7 else UCS2_ELLIPSIS
    # Segments grow monotonically with the prefix length, so a binary search finds the cut.
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if count_segments(text[:mid] + ellipsis)[1] <= max_segments:
            low = mid
        else:
            high = mid - 1
    return text[: _clean_cut(text, low)] + ellipsis


def fit_keeping_head(text: str, max_segments: int, head_lines: int = 2) -> str:
    """``fit_segments``, but the first ``head_lines`` lines always survive: a page's SMS says
    what happened, then how to acknowledge. When those lines alone do not fit (a long title
    in UCS-2, 70 units for a single SMS), the first line is shortened, never the others; the
    rest of the text fills what room is left."""
    fitted = fit_segments(text, max_segments)
    lines = text.split("\n")
    head = "\n".join(lines[:head_lines])
    if fitted.startswith(head) or len(lines) == 1:
        return fitted
    if count_segments(head)[1] <= max_segments:
        return head  # the head fits, but not with even an ellipsis after it
    first, rest = lines[0], "\n" + "\n".join(lines[1:head_lines])
    if count_segments(rest.lstrip("\n"))[1] > max_segments:
        return fitted  # the later head lines alone are too long: a plain cut is all we can do
    ellipsis = GSM7_ELLIPSIS if is_gsm7(head) else UCS2_ELLIPSIS
    low, high = 0, len(first)
    while low < high:  # the longest prefix of the first line that fits with the rest
        mid = (low + high + 1) // 2
        if count_segments(first[:mid] + ellipsis + rest)[1] <= max_segments:
            low = mid
        else:
            high = mid - 1
    shortened = first[: _clean_cut(first, low)] + ellipsis + rest
    return shortened if count_segments(shortened)[1] <= max_segments else fitted
