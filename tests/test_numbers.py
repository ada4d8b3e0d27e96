"""One strict parser for the numbers clients write in headers: ASCII digits of bounded length, or nothing."""

from __future__ import annotations

import pytest

from router.numbers import parse_uint


@pytest.mark.parametrize(("text", "number"), [("0", 0), ("42", 42), (" 7\t", 7), ("007", 7), ("9" * 18, 10**18 - 1)])
def test_ascii_digits_are_a_number(text: str, number: int) -> None:
    assert parse_uint(text) == number


@pytest.mark.parametrize("text", ["", " ", "²", "¹", "١٢", "٣", "1_000", "+1", "-1", "1e3", "0x10", "1.5", "NaN",
                                  "9" * 19, "9" * 5000, None])
def test_anything_else_is_not(text: str | None) -> None:
    assert parse_uint(text) is None  # str.isdigit() accepts '²' and int() accepts '١٢', '1_000' and '+1'
