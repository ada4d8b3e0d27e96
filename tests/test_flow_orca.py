"""ORCA load reports in the endpoint-load-metrics header: both formats, and malformed ones ignored."""

from __future__ import annotations

import pytest

from router.flow.orca import parse_load_report


@pytest.mark.parametrize("header", [
    "TEXT application_utilization=0.75, named_metrics.num_requests_waiting=3",
    "TEXT application_utilization:0.75,named_metrics.num_requests_waiting:3",
    "application_utilization=0.75, named_metrics.num_requests_waiting: 3",
    'JSON {"application_utilization": 0.75, "named_metrics": {"num_requests_waiting": 3}}',
    'JSON {"applicationUtilization": 0.75, "namedMetrics": {"num_requests_waiting": 3}}',
])
def test_text_and_json_reports_give_utilization_and_waiting_requests(header: str) -> None:
    report = parse_load_report(header)
    assert report is not None
    assert report.utilization == 0.75
    assert report.waiting == 3.0


def test_application_utilization_wins_over_cpu_and_cpu_is_the_fallback() -> None:
    both = parse_load_report("TEXT cpu_utilization=0.2, application_utilization=0.9, rps_fractional=120.5")
    assert both is not None
    assert both.utilization == 0.9
    assert both.metrics["rps_fractional"] == 120.5
    cpu = parse_load_report("TEXT cpu_utilization=0.2")
    assert cpu is not None
    assert (cpu.utilization, cpu.waiting) == (0.2, None)


@pytest.mark.parametrize("header", [
    None, "", "TEXT", "garbage", "TEXT cpu_utilization", "cpu_utilization=high", "cpu_utilization=-1",
    "cpu_utilization=nan", "=0.5", "JSON", "JSON {not json", "JSON [0.5]", 'JSON {"cpu_utilization": "x"}',
    "BIN CgQIARAB", "a=1," * 2000,
])
def test_malformed_reports_are_ignored(header: str | None) -> None:
    assert parse_load_report(header) is None


@pytest.mark.parametrize("header", ["textgen_waiting=2, cpu_utilization=0.4", "json_errors=2, cpu_utilization=0.4"])
def test_a_report_without_the_prefix_may_start_with_a_metric_named_like_a_format(header: str) -> None:
    report = parse_load_report(header)
    assert report is not None
    assert report.utilization == 0.4
    assert report.metrics[header.split("=")[0]] == 2.0
