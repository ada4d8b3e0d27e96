"""Config loading: every error at once, each with file:line:col and the field path."""

from pathlib import Path

import pytest

from router.cli import main
from router.config import load_config, parse_config
from router.types import Lane
from router.yamlpos import ConfigError

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """\
backends:
  rt: {kind: http, url: "http://127.0.0.1:9/invocations"}
models:
  m:
    lanes: {realtime: rt}
"""


def issues_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml", env or {})
    return [str(i) for i in info.value.issues]


def test_minimal_config_gets_sane_defaults() -> None:
    cfg = parse_config(MINIMAL, "cfg.yaml", {})
    assert cfg.server.listen == "127.0.0.1:8080"
    assert cfg.backends["rt"].timeout == 60.0
    assert cfg.models["m"].limit(Lane.REALTIME) == 6_000_000
    assert cfg.models["m"].default_route().lane == "realtime"
    assert cfg.urgency.anonymous_ceiling == 2  # anonymous callers may claim at most "high"


def test_unknown_key_is_reported_at_its_line_and_column() -> None:
    text = MINIMAL.replace("    lanes: {realtime: rt}", "    lanes: {realtime: rt}\n    lanez: 1")
    assert issues_of(text) == ["cfg.yaml:6:5: models.m.lanez: unknown key 'lanez': did you mean 'lanes'?"]


def test_every_error_is_reported_not_just_the_first() -> None:
    text = """\
server: {listen: "nope", bogus: 1}
backends:
  up: {kind: http, url: "ftp://x", max_concurrency: 0}
  sm: {kind: sagemaker}
models:
  m:
    lanes: {realtime: nothere, serverless: up}
    policy: [missing]
policies:
  p1: {type: shed, params: {below_urgency: urgent}}
  p3: {type: nosuch}
"""
    found = issues_of(text)
    assert found == [
        "cfg.yaml:1:18: server.listen: listen must be HOST:PORT, got 'nope'",
        "cfg.yaml:1:26: server.bogus: unknown key",
        "cfg.yaml:3:25: backends.up.url: url must be an http:// or https:// URL, got 'ftp://x'",
        "cfg.yaml:3:53: backends.up.max_concurrency: Input should be greater than or equal to 1",
        "cfg.yaml:4:7: backends.sm.endpoint: required field is missing",
        "cfg.yaml:7:23: models.m.lanes.realtime: unknown backend 'nothere'",
        "cfg.yaml:8:14: models.m.policy.0: unknown policy 'missing'",
        "cfg.yaml:10:44: policies.p1.params.below_urgency: unknown urgency level 'urgent' "
        "(levels: critical, high, normal, low)",
        "cfg.yaml:11:14: policies.p3.type: unknown policy type 'nosuch' (known: deadline, rules, shed, weighted)",
    ]


def test_yaml_syntax_error_points_at_the_problem() -> None:
    (only,) = issues_of("backends:\n  rt: {kind: http\nmodels: {}\n")
    assert only.startswith("cfg.yaml:3:")
    assert "YAML syntax" in only


def test_duplicate_keys_are_errors_not_silently_overwritten() -> None:
    text = MINIMAL + "  m:\n    lanes: {realtime: rt}\n"
    assert issues_of(text) == ["cfg.yaml:6:3: models.m: duplicate key"]


def test_env_vars_are_substituted_and_a_missing_one_is_an_error() -> None:
    text = MINIMAL.replace("http://127.0.0.1:9", "http://127.0.0.1:${PORT}") + "server: {admin_token: '${TOKEN}'}\n"
    cfg = parse_config(text, "cfg.yaml", {"PORT": "9101", "TOKEN": "s3cret"})
    assert cfg.backends["rt"].url == "http://127.0.0.1:9101/invocations"  # type: ignore[union-attr]
    assert cfg.server.admin_token is not None
    assert cfg.server.admin_token.get_secret_value() == "s3cret"
    assert issues_of(text, {"PORT": "1"}) == [
        "cfg.yaml:6:23: server.admin_token: environment variable TOKEN is not set (write ${TOKEN:-default})"
    ]


def test_env_default_and_escaped_dollar() -> None:
    text = MINIMAL + "server: {admin_token: '${TOKEN:-fallback}$$x'}\n"
    token = parse_config(text, "cfg.yaml", {}).server.admin_token
    assert token is not None
    assert token.get_secret_value() == "fallback$x"


def test_rule_matcher_errors_point_into_the_rule() -> None:
    text = MINIMAL + """\
    policy: [r]
policies:
  r:
    type: rules
    params:
      - {when: {payload_bytes: {gt: 6XB}}, route: realtime}
      - {when: {saturation.nowhere: {gte: 1}}, route: realtime}
"""
    found = issues_of(text)
    assert found[0].startswith("cfg.yaml:11:32: policies.r.params.0.when.payload_bytes: invalid size '6XB'")
    assert found[1].startswith("cfg.yaml:12:37: policies.r.params.1.when.saturation.nowhere: unknown matcher")


def test_batch_lane_takes_its_settings_and_caps_requests_at_max_bytes() -> None:
    text = MINIMAL.replace("{realtime: rt}", "{realtime: rt, batch: rt}\n    batch: {max_records: 50, max_bytes: 1MB,"
                                            " max_wait: 250ms}")
    model = parse_config(text, "cfg.yaml", {}).models["m"]
    assert (model.batch.max_records, model.batch.max_bytes, model.batch.max_wait) == (50, 1_000_000, 0.25)
    assert model.limit(Lane.BATCH) == 1_000_000  # a request over max_bytes on its own is refused...
    split = parse_config(text.replace("max_wait: 250ms", "max_wait: 250ms, oversized: split"), "cfg.yaml", {})
    assert split.models["m"].limit(Lane.BATCH) == 100_000_000  # ...unless it may run alone, split


def test_batch_settings_errors_are_all_reported() -> None:
    text = MINIMAL.replace("{realtime: rt}", "{realtime: rt, batch: rt}\n    batch: {max_records: 0, max_wait: soon,"
                                            " oversized: chop}")
    found = issues_of(text)
    assert [f.split(": ")[1] for f in found] == ["models.m.batch.max_records", "models.m.batch.max_wait",
                                                 "models.m.batch.oversized"]


def test_batch_lane_in_aws_state_needs_a_batch_queue() -> None:
    state = "state: {kind: aws, bucket: bkt, queue_url: 'http://127.0.0.1:9/q'}\n"
    text = state + MINIMAL.replace("{realtime: rt}", "{realtime: rt, batch: rt}")
    assert any("models.m.lanes.batch: with state kind 'aws' the batch lane needs state.batch_queue_url" in f
               for f in issues_of(text))
    ok = text.replace("queue_url: 'http://127.0.0.1:9/q'", "queue_url: 'http://127.0.0.1:9/q', "
                      "batch_queue_url: 'http://127.0.0.1:9/b'")
    assert parse_config(ok, "cfg.yaml", {}).models["m"].lanes["batch"] == "rt"


@pytest.mark.parametrize("name", ["default.yaml", "demo.yaml", "latency-first.yaml", "cost-saver.yaml"])
def test_shipped_policy_files_are_valid(name: str) -> None:
    cfg = load_config(ROOT / "policies" / name, env={})
    assert cfg.models


def test_check_command_prints_file_line_col_and_exits_non_zero(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINIMAL.replace("realtime: rt", "realtime: missing"))
    assert main(["check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5:23: models.m.lanes.realtime: unknown backend 'missing'" in err


def test_check_command_accepts_a_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(MINIMAL)
    assert main(["check", "--config", str(good)]) == 0
    assert "ok (1 models, 1 backends, 0 policies)" in capsys.readouterr().out


def test_max_concurrency_takes_auto_an_integer_or_bounds_and_the_runtime_builds_the_matching_limit() -> None:
    from router.config import AdaptiveConcurrencyConfig
    from router.runtime import tracker_settings

    text = """\
backends:
  a: {kind: http, url: "http://127.0.0.1:9/i", max_concurrency: auto}
  b: {kind: http, url: "http://127.0.0.1:9/i", max_concurrency: {initial: 2, max: 50}}
  c: {kind: http, url: "http://127.0.0.1:9/i", max_concurrency: 12}
models:
  m: {lanes: {realtime: a}}
"""
    cfg = parse_config(text, "cfg.yaml", {})
    a, b, c = (cfg.backends[n] for n in "abc")
    assert a.max_concurrency == AdaptiveConcurrencyConfig(initial=4, min=1, max=1000)
    sa, sb, sc = tracker_settings(a), tracker_settings(b), tracker_settings(c)
    assert sb.adaptive is not None
    assert (sb.max_concurrency, sb.adaptive.initial, sb.adaptive.min, sb.adaptive.max) == (50, 2, 1, 50)
    assert sa.adaptive is not None
    assert sa.max_concurrency == 1000
    assert (sc.max_concurrency, sc.adaptive) == (12, None)


def test_bad_max_concurrency_values_are_each_reported_at_file_line_col() -> None:
    text = """\
backends:
  a: {kind: http, url: "http://127.0.0.1:9/i", max_concurrency: fast}
  b: {kind: http, url: "http://127.0.0.1:9/i", max_concurrency: {initial: 9, max: 4}}
  c: {kind: http, url: "http://127.0.0.1:9/i", max_concurrency: {initial: 0, step: 2}}
  d: {kind: http, url: "http://127.0.0.1:9/i", max_concurrency: true}
models:
  m: {lanes: {realtime: a}}
"""
    assert issues_of(text) == [
        "cfg.yaml:2:65: backends.a.max_concurrency: max_concurrency must be auto, an integer or "
        "{initial, min, max}, got 'fast'",
        "cfg.yaml:3:65: backends.b.max_concurrency: initial (9) must be between min (1) and max (4)",
        "cfg.yaml:4:75: backends.c.max_concurrency.initial: Input should be greater than or equal to 1",
        "cfg.yaml:4:78: backends.c.max_concurrency.step: unknown key",
        "cfg.yaml:5:65: backends.d.max_concurrency: max_concurrency must be auto, an integer or "
        "{initial, min, max}, not a boolean",
    ]


def test_breaker_and_retry_budget_settings_have_documented_defaults_and_the_old_keys_still_load() -> None:
    cfg = parse_config(MINIMAL, "cfg.yaml", {})
    brk, retry = cfg.backends["rt"].breaker, cfg.fallback
    assert (brk.failures, brk.failure_rate, brk.min_requests, brk.window, brk.open_for, brk.probe_share) == (
        10, 0.8, 20, 10.0, 10.0, 0.1)
    assert (retry.retry_budget, retry.retry_burst, retry.min_retries_per_second) == (0.15, 10.0, 0.0)
    old = MINIMAL.replace('url: "http://127.0.0.1:9/invocations"',
                          'url: "http://127.0.0.1:9/invocations", breaker: {failures: 5, open_for: 30s}')
    old += "fallback: {retry_budget: 0.2, min_retries_per_second: 5}\n"
    cfg = parse_config(old, "cfg.yaml", {})
    assert (cfg.backends["rt"].breaker.failures, cfg.fallback.min_retries_per_second) == (5, 5.0)
    assert issues_of(MINIMAL + "fallback: {retry_burst: 0}\n") == [
        "cfg.yaml:6:25: fallback.retry_burst: Input should be greater than or equal to 1"]
