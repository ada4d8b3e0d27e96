"""Strict parsing of the numbers clients write in headers and queries.

``str.isdigit()`` accepts superscripts ('²') that ``int()`` refuses, ``int()`` accepts Arabic-Indic digits,
'_' separators and signs, and a string of thousands of digits makes ``int()`` raise (or, below its limit,
spend quadratic time). A number from the network is ASCII digits only, of bounded length, or it is not one.
"""

from __future__ import annotations

MAX_DIGITS = 18  # every value below 10**18 fits: bytes, milliseconds, seconds


def parse_uint(text: str | None, *, max_digits: int = MAX_DIGITS) -> int | None:
    """The non-negative integer ``text`` spells in ASCII digits (spaces and tabs around it allowed), else None."""
    if text is None:
        return None
    digits = text.strip(" \t")
    if not 0 < len(digits) <= max_digits or not digits.isascii() or not digits.isdigit():
        return None
    return int(digits)
