import pytest

from router.units import format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [("6MB", 6_000_000), ("6MiB", 6 * 1024**2), ("1GiB", 1024**3), ("512", 512), ("512B", 512),
     ("4 mb", 4_000_000), ("1.5KB", 1500), (1024, 1024)],
)
def test_sizes_take_decimal_and_binary_units(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["6XB", "MB", "-1", -1, True, "1e6", None])
def test_invalid_sizes_are_refused_with_the_units_named(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("250ms", 0.25), ("60s", 60.0), ("10m", 600.0), ("1h", 3600.0), ("2", 2.0), (1.5, 1.5), ("5min", 300.0),
     ("7d", 604800.0)],
)
def test_durations_take_units_and_bare_numbers_are_seconds(text: object, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["10 parsecs", "ms", -3, False])
def test_invalid_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_format_size_picks_the_exact_unit() -> None:
    assert format_size(6 * 1024**2) == "6MiB"
    assert format_size(4_000_000) == "4MB"
    assert format_size(1001) == "1001B"
