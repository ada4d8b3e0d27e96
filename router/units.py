"""Sizes (``6MB``, ``1GiB``) and durations (``250ms``, ``1h``) as they are written in the YAML config."""

from __future__ import annotations

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
_NUMBER_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: object) -> int:
    """Bytes from ``6MB`` (10^6), ``6MiB`` (2^20), ``512`` or ``512B``."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '6MB' or '1GiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise ValueError(f"invalid size {value!r}: use a number of bytes or units B, KB, MB, GB, KiB, MiB, GiB")


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``60s``, ``10m``, ``1h``, ``7d``; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '250ms' or '10m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _NUMBER_UNIT.match(value)
        if m and m.group(2).lower() in _DURATION_UNITS:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()]
        if m and m.group(2) == "":
            return float(m.group(1))
    raise ValueError(f"invalid duration {value!r}: use units ms, s, m, h, d (e.g. '250ms', '60s')")


def format_size(n: int) -> str:
    """The shortest exact spelling of a byte count, for messages."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return f"{n}B"
