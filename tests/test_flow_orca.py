"""ORCA load reports in the endpoint-load-metrics header: both formats, and malformed ones ignored."""

from __future__ import annotations

import pytest

from router.flow.orca import MAX_REPORT, parse_load_report


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
    'JSON {"cpu_utilization": true}', 'JSON {"cpu_utilization": null}', 'JSON {"cpu_utilization": [0.5]}',
    "cpu_utilization=0.5=0.7", "cpu_utilization:0.5:0.7", "BIN CgQIARAB", "a=1," * 2000,
])
def test_malformed_reports_are_ignored(header: str | None) -> None:
    assert parse_load_report(header) is None


@pytest.mark.parametrize("header", ["textgen_waiting=2, cpu_utilization=0.4", "json_errors=2, cpu_utilization=0.4"])
def test_a_report_without_the_prefix_may_start_with_a_metric_named_like_a_format(header: str) -> None:
    report = parse_load_report(header)
    assert report is not None
    assert report.utilization == 0.4
    assert report.metrics[header.split("=")[0]] == 2.0


def test_an_idle_backend_reporting_zero_utilization_is_read_as_zero() -> None:
    report = parse_load_report("TEXT cpu_utilization=0, named_metrics.num_requests_waiting=0")
    assert report is not None
    assert (report.utilization, report.waiting) == (0.0, 0.0)


def test_an_empty_pair_is_skipped_and_the_pairs_after_it_are_read() -> None:
    report = parse_load_report("TEXT cpu_utilization=0.5,, named_metrics.num_requests_waiting=2,")
    assert report is not None
    assert (report.utilization, report.waiting) == (0.5, 2.0)


def test_only_the_named_metrics_object_gives_named_metrics() -> None:
    report = parse_load_report('JSON {"cpu_utilization": 0.5, "request_cost": {"num_requests_waiting": 4},'
                               ' "named_metrics": [3]}')
    assert report is not None
    assert report.metrics == {"cpu_utilization": 0.5}


def test_a_report_of_up_to_max_report_characters_is_read() -> None:
    report = "TEXT cpu_utilization=0.5"
    assert parse_load_report(report.ljust(MAX_REPORT)) is not None
    assert parse_load_report(report.ljust(MAX_REPORT + 1)) is None
