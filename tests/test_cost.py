"""The cost model against examples computed by hand, and its config errors at FILE:LINE:COL."""

from __future__ import annotations

import pytest

from router.config import parse_config
from router.cost import Billing, costs, shipped_prices
from router.yamlpos import ConfigError

BASE = """\
backends:
{backends}
models:
  m: {{lanes: {{realtime: rt}}}}
{extra}
"""


def _cfg(backends: str, extra: str = "") -> str:
    return BASE.format(backends=backends, extra=extra)


def test_the_price_table_is_dated_and_has_the_issues_facts() -> None:
    table = shipped_prices()
    assert table.region == "us-east-1"
    assert table.checked
    assert table.instance_hourly["ml.m5.large"] == 0.115
    assert table.instance_hourly["ml.c5.xlarge"] == 0.204
    assert table.serverless_gb_second == 0.00002


def test_two_real_time_instances_cost_their_hourly_rate_around_the_clock() -> None:
    cfg = parse_config(_cfg("  rt: {kind: http, url: 'http://h/', max_concurrency: 8, "
                            "cost: {instance_type: ml.m5.large, instances: 2}}"))
    rt = costs(cfg)["rt"]
    assert rt.billing is Billing.INSTANCES
    assert rt.fixed_per_hour * 24 == pytest.approx(5.52)  # 0.115 x 2 x 24
    # a 2 s call on one of 4 slots per instance (8 / 2): a quarter of 2 s of one instance
    assert rt.call(2.0) == pytest.approx(0.115 * 2.0 / 3600.0 / 4)


def test_serverless_bills_gb_seconds_of_each_call_and_nothing_idle() -> None:
    cfg = parse_config(_cfg("  rt: {kind: http, url: 'http://h/', serverless: {}, cost: {memory_mb: 2048}}"))
    sls = costs(cfg)["rt"]
    assert sls.billing is Billing.SERVERLESS
    assert sls.fixed_per_hour == 0.0
    assert sls.call(1.0) == pytest.approx(0.00004)  # 2 GB = $0.00004 per second
    assert sum(sls.call(0.25) for _ in range(1000)) == pytest.approx(0.01)  # 1000 calls of 250 ms


def test_provisioned_concurrency_is_billed_by_the_hour_at_the_configured_price() -> None:
    cfg = parse_config(_cfg("  rt: {kind: http, url: 'http://h/', serverless: {}, cost: {memory_mb: 4096, "
                            "provisioned_concurrency: 2, provisioned_gb_second: 0.000005}}"))
    assert costs(cfg)["rt"].fixed_per_hour == pytest.approx(2 * 4 * 0.000005 * 3600)  # $0.144 per hour


def test_a_batch_transform_job_costs_its_instances_for_its_whole_run() -> None:
    cfg = parse_config("""\
backends:
  rt: {kind: http, url: 'http://h/'}
  bt: {kind: sagemaker-batch, model_name: m, instance_type: ml.c5.xlarge, instance_count: 2,
       input_location: 's3://bucket/in', output_location: 's3://bucket/out'}
models:
  m: {lanes: {realtime: rt, batch: bt}}
""")
    bt = costs(cfg)["bt"]
    assert bt.billing is Billing.BATCH_TRANSFORM
    assert bt.transform_job(15 * 60) == pytest.approx(0.102)  # 0.204 x 2 instances x 0.25 h
    assert "rt" not in costs(cfg)  # no cost block: not priced


def test_the_config_overrides_the_table() -> None:
    cfg = parse_config(_cfg("  rt: {kind: http, url: 'http://h/', cost: {instance_type: ml.g5.xlarge}}",
                            "prices: {instance_hourly: {ml.g5.xlarge: 1.5}, serverless_gb_second: 0.00001}"))
    assert costs(cfg)["rt"].hourly == 1.5
    cfg = parse_config(_cfg("  rt: {kind: http, url: 'http://h/', cost: {instance_type: ml.m5.large, hourly: 0.1}}"))
    assert costs(cfg)["rt"].hourly == 0.1


def test_unpriced_costs_are_config_errors_with_their_position() -> None:
    text = _cfg("  rt: {kind: http, url: 'http://h/', cost: {instance_type: ml.g5.xlarge}}\n"
                "  sls: {kind: http, url: 'http://h/', serverless: {}, cost: {provisioned_concurrency: 1}}")
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.yaml")
    lines = [str(i) for i in err.value.issues]
    assert any(line.startswith("c.yaml:2:") and "ml.g5.xlarge" in line and "cost.hourly" in line for line in lines)
    assert any(line.startswith("c.yaml:3:") and "memory_mb" in line for line in lines)
