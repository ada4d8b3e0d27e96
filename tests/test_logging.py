"""The access log's own path writes the line structlog's JSON chain would, and obeys the log level."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import msgspec
import pytest
import structlog

from router.logging import ACCESS_LOG, RequestLine, configure_logging


def _line() -> RequestLine:
    return RequestLine("rid-1", "0af7651916cd43dd8448eb211c80319c", "fraud", "serverless", "fraud-sls",
                       "realtime_full", 200, 12.5, "team-a", "high", 60, 1767225600.123456, "text/csv", 250, True,
                       5.0, 1.25, True)


@pytest.fixture(autouse=True)
def _json_logging() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    configure_logging("json")  # as tests/conftest.py left it (the access log's path, the root handler)...
    # ...with structlog's very processor list: loggers cached since hold it, and capture_logs() edits it in place
    structlog.configure(**saved)


def _lines(capfd: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]


def test_the_access_line_is_the_one_structlog_renders_keys_in_the_same_order(
        capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("json")
    capfd.readouterr()
    ACCESS_LOG.write(_line())
    fields = msgspec.structs.asdict(_line())
    for key in ("event", "level", "timestamp"):
        del fields[key]
    structlog.get_logger("router.access").info("request", **fields)
    direct, through_structlog = _lines(capfd)
    assert list(direct) == list(through_structlog)
    stamp = direct.pop("timestamp")
    through_structlog.pop("timestamp")
    assert direct == through_structlog
    assert isinstance(stamp, str)
    assert stamp.endswith("Z")
    assert len(stamp) == len("2026-01-01T00:00:00.000000Z")


def test_a_log_level_above_info_drops_access_lines(capfd: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", logging.WARNING)
    capfd.readouterr()
    ACCESS_LOG.write(_line())
    assert _lines(capfd) == []
