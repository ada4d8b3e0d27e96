"""Sizes (``6MB``, ``1GiB``) and durations (``250ms``, ``1h``) as they are written in the YAML config."""

from __future__ import annotations

import math
import re

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
# ASCII digits only (\d would take any script's digits), of bounded length: a config is not a bignum test.
_NUMBER_UNIT = re.compile(r"^[ \t]*([0-9]{1,15}(?:\.[0-9]{1,9})?)[ \t]*([a-zA-Z]{0,3})[ \t]*$")
MAX_SIZE = 2**60  # bytes: far above any payload, far below what SQLite or a float can hold exactly
MAX_DURATION_S = 100 * 365 * 86400.0  # timers of event loops overflow somewhere above this


def _shown(value: object) -> str:
    """A value for an error message: the start of a long one only."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def parse_size(value: object) -> int:
    """Bytes from ``6MB`` (10^6), ``6MiB`` (2^20), ``512`` or ``512B``."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '6MB' or '1GiB'")
    size: int | None = None
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if size is not None:
        if size < 0:
            raise ValueError("a size cannot be negative")
        if size > MAX_SIZE:
            raise ValueError("a size cannot exceed 1EiB")
        return size
    raise ValueError(f"invalid size {_shown(value)}: use a number of bytes or units B, KB, MB, GB, KiB, MiB, GiB")


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``60s``, ``10m``, ``1h``, ``7d``; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '250ms' or '10m'")
    seconds: float | None = None
    if isinstance(value, int | float):
        # an int too large for a float cannot be a duration either (float() would raise OverflowError)
        seconds = float(value) if abs(value) <= MAX_DURATION_S else math.inf
    elif isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _DURATION_UNITS:
            seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
        elif m and m.group(2) == "":
            seconds = float(m.group(1))
    if seconds is not None:
        if math.isnan(seconds):
            raise ValueError("a duration must be a number")
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        if seconds > MAX_DURATION_S:
            raise ValueError("a duration cannot exceed 100 years")
        return seconds
    raise ValueError(f"invalid duration {_shown(value)}: use units ms, s, m, h, d (e.g. '250ms', '60s')")


def format_size(n: int) -> str:
    """The shortest exact spelling of a byte count, for messages."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"
