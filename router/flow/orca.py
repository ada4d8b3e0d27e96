"""ORCA load reports from the ``endpoint-load-metrics`` response header (as Envoy and the Gateway API
Inference Extension read them).

Formats: ``TEXT`` — ``key:value`` or ``key=value`` pairs, comma-separated, the ``TEXT `` prefix optional —
and ``JSON {...}`` (the OrcaLoadReport message as JSON, ``named_metrics`` a nested object). Named metrics
come back as ``named_metrics.<name>``. A malformed report is ignored (``None``): it never fails a call.
(The binary ``BIN`` format, base64 protobuf, is not read.)
"""

from __future__ import annotations

import json
import math
import re
from typing import NamedTuple

MAX_REPORT = 4096  # longer headers are not parsed: a report is a handful of numbers
WAITING = "named_metrics.num_requests_waiting"


class LoadReport(NamedTuple):
    """What a backend said about its own load."""

    metrics: dict[str, float]

    @property
    def utilization(self) -> float | None:
        """``application_utilization`` if sent (it is meant to win), else ``cpu_utilization``; None if neither."""
        value = self.metrics.get("application_utilization")
        if value is None or value <= 0.0:
            value = self.metrics.get("cpu_utilization")
        return value

    @property
    def waiting(self) -> float | None:
        """Requests waiting in the server's own queue (``named_metrics.num_requests_waiting``)."""
        return self.metrics.get(WAITING)


def parse_load_report(header: str | None) -> LoadReport | None:
    """The report in ``header``, or None when there is none or it cannot be read."""
    if not header or len(header) > MAX_REPORT:
        return None
    text = header.strip()
    # the format is a word of its own ("TEXT ", "JSON "), not the start of a first metric's name
    fmt, _, rest = text.partition(" ")
    fmt = fmt.upper()
    metrics = _json(rest) if fmt == "JSON" else _text(rest if fmt == "TEXT" else text)
    return LoadReport(metrics) if metrics else None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0.0 else None


def _text(text: str) -> dict[str, float] | None:
    metrics: dict[str, float] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep:
            key, sep, value = pair.partition(":")
        key = key.strip()
        if not sep or not key:
            if pair.strip():
                return None
            continue
        number = _number(value.strip())
        if number is None:
            return None
        metrics[key] = number
    return metrics


def _snake(key: str) -> str:
    """Protobuf's JSON mapping writes ``cpuUtilization``; ORCA's field names are ``cpu_utilization``."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", key).lower()


def _json(text: str) -> dict[str, float] | None:
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    metrics: dict[str, float] = {}
    for raw_key, value in doc.items():
        key = _snake(str(raw_key))
        if key == "named_metrics" and isinstance(value, dict):
            for name, raw in value.items():
                if (number := _number(raw)) is not None:
                    metrics[f"named_metrics.{name}"] = number
        elif (number := _number(value)) is not None:
            metrics[key] = number
    return metrics
