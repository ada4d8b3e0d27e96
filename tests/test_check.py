"""``check``: configs that cannot work are errors, configs that do not work as written are warnings, all of them
listed in one run at FILE:LINE:COL; the shipped files pass ``check --strict``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from router.cli import main
from router.config import parse_config
from router.yamlpos import ConfigError, ConfigIssue

ROOT = Path(__file__).resolve().parent.parent

SAGEMAKER = """\
backends:
  rt: {kind: sagemaker, endpoint: e-rt, region: us-east-1}
  sls: {kind: sagemaker, endpoint: e-sls, region: us-east-1, serverless: {idle_after: 10m}}
  http: {kind: http, url: "http://127.0.0.1:9/invocations"}
models:
"""


def errors_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.yaml", env or {})
    return [str(i) for i in info.value.issues]


def warnings_of(text: str) -> list[str]:
    found: list[ConfigIssue] = []
    parse_config(text, "cfg.yaml", {}, warnings=found)
    return [str(i) for i in found]


def test_a_lane_limit_above_what_its_sagemaker_endpoint_takes_is_an_error_at_the_limit() -> None:
    text = SAGEMAKER + """\
  m:
    lanes: {realtime: rt, serverless: sls}
    limits: {realtime: 10MB, serverless: 5MB}
"""
    assert errors_of(text) == [
        "cfg.yaml:8:24: models.m.limits.realtime: the realtime lane takes payloads up to 10MB, but its backend 'rt' "
        "refuses them above 6MB: a SageMaker real-time endpoint (InvokeEndpoint) takes at most 6MB per call",
        "cfg.yaml:8:42: models.m.limits.serverless: the serverless lane takes payloads up to 5MB, but its backend "
        "'sls' refuses them above 4MB: a SageMaker serverless endpoint takes at most 4MB per call",
    ]


def test_a_default_limit_counts_too_the_async_lane_on_a_real_time_endpoint_is_an_error_at_the_lane() -> None:
    text = SAGEMAKER + "  m:\n    lanes: {realtime: rt, async: rt}\n"
    (only,) = errors_of(text)
    assert only.startswith("cfg.yaml:7:34: models.m.lanes.async: the async lane's limit is 1GB (the default), but "
                           "backend 'rt' refuses payloads above 6MB")
    assert "give the async lane a sagemaker-async backend" in only
    parse_config(text.replace("async: rt}", "async: rt}\n    limits: {async: 6MB}"), "cfg.yaml", {})
    parse_config(text.replace("{realtime: rt, async: rt}", "{realtime: rt, serverless: sls, async: http}"),
                 "cfg.yaml", {})  # an http model server has no cap the router could know


def test_server_max_body_below_the_cap_makes_a_large_lane_limit_harmless() -> None:
    text = "server: {max_body: 6MB}\n" + SAGEMAKER + "  m:\n    lanes: {realtime: rt, async: rt}\n"
    assert parse_config(text, "cfg.yaml", {}).models["m"].lanes["async"] == "rt"


def test_batch_mini_batches_above_a_serverless_endpoint_are_an_error() -> None:
    text = SAGEMAKER + "  m:\n    lanes: {realtime: rt, batch: sls}\n    batch: {max_payload: 5MB}\n"
    (only,) = errors_of(text)
    assert only.startswith("cfg.yaml:8:26: models.m.batch.max_payload: the batch lane sends mini-batches of up to 5MB")


def test_every_error_is_listed_in_one_run_each_at_its_own_line() -> None:
    text = SAGEMAKER + """\
  m:
    lanes: {realtime: rt}
    limits: {realtime: 7MB}
    policy: [p]
  m:
    lanes: {realtime: rt}
policies:
  p: {type: shed, params: {reason: '${UNSET_REASON}'}}
  p1: {type: shed, params: {below_urgency: nope}}
  p2: {type: rules, params: [{route: realtime, backend: nowhere}]}
  p3: {type: deadline, params: {retry_after: '${ALSO_UNSET}'}}
"""
    assert [e.split(": ")[0] + ": " + e.split(": ")[1] for e in errors_of(text)] == [
        "cfg.yaml:8:24: models.m.limits.realtime",
        "cfg.yaml:10:3: models.m",  # duplicate key
        "cfg.yaml:13:36: policies.p.params.reason",  # missing variable, reported once (not also as a bad reason)
        "cfg.yaml:14:44: policies.p1.params.below_urgency",
        "cfg.yaml:15:57: policies.p2.params.0.backend",
        "cfg.yaml:16:46: policies.p3.params.retry_after",
    ]


def test_an_unclosed_quote_is_reported_where_it_opens_not_at_the_end_of_the_file() -> None:
    at_the_end = 'backends: {rt: {kind: sagemaker, endpoint: "e-rt}}\nmodels: {m: {lanes: {realtime: rt}}}\n'
    assert errors_of(at_the_end) == ["cfg.yaml:1:44: (root): YAML syntax: this \" quote is never closed"]
    closed_later = 'server: {listen: "127.0.0.1:8080}\n' + SAGEMAKER + "  m: {lanes: {realtime: rt}}\n"
    assert errors_of(closed_later) == [
        "cfg.yaml:1:18: (root): YAML syntax: this \" quote runs on over several lines; is it closed? (then: expected "
        "',' or '}', but got '<scalar>', at line 5, column 28)"]


def test_an_unclosed_flow_mapping_says_where_it_opened() -> None:
    (only,) = errors_of("backends:\n  rt: {kind: http\nmodels: {}\n")
    assert only.startswith("cfg.yaml:3:7: (root): YAML syntax:")
    assert "(in the flow mapping opened at line 2, column 7)" in only


def test_unknown_keys_suggest_the_key_meant() -> None:
    text = SAGEMAKER.replace("region: us-east-1}", "region: us-east-1, max_concurency: 4}", 1) + """\
  m: {lanes: {realtime: rt}, policy: [s, r]}
policies:
  s: {type: shed, params: {below_urgncy: low}}
  r: {type: rules, params: [{wen: {}, route: realtime}]}
"""
    assert errors_of(text) == [
        "cfg.yaml:2:60: backends.rt.max_concurency: unknown key 'max_concurency': did you mean 'max_concurrency'?",
        "cfg.yaml:8:28: policies.s.params.below_urgncy: unknown key 'below_urgncy': did you mean 'below_urgency'?",
        "cfg.yaml:9:30: policies.r.params.0.wen: unknown key 'wen': did you mean 'when'?",
    ]


def test_an_unknown_matcher_suggests_the_one_meant() -> None:
    text = SAGEMAKER + """\
  m: {lanes: {realtime: rt}, policy: [r]}
policies:
  r: {type: rules, params: [{when: {saturaton.realtime: 1}, route: realtime}]}
"""
    (only,) = errors_of(text)
    assert "unknown matcher 'saturaton.realtime' (did you mean 'saturation.realtime'?" in only


RULES = SAGEMAKER.replace('  http: {kind: http, url: "http://127.0.0.1:9/invocations"}\n', "") + """\
  m:
    lanes: {realtime: rt, serverless: sls}
    policy: [r, later]
callers:
  - {api_key: a-long-key-1, tenant: team-a}
policies:
  later: {type: shed}
  r:
    type: rules
    params:
"""


def test_rules_that_can_never_match_are_warnings_each_saying_why() -> None:
    text = RULES + """\
      - {when: {payload_bytes: {gt: 6MB, lt: 4MB}}, route: serverless}
      - {when: {saturation.realtime: {gt: 1.0}}, route: serverless}
      - {when: {caller: team-b}, route: serverless}
      - {when: {cold.realtime: true}, route: serverless}
      - {when: {queue_depth.async: {gt: 0}}, route: serverless}
      - {when: {has_deadline: false, deadline_ms: {lt: 100}}, route: serverless}
      - {when: {urgency: {gt: critical}}, route: serverless}
      - {when: {saturation.realtime: {gte: 0.9}}, route: serverless, fallback: [realtime], reason: busy}
      - {route: realtime, fallback: [serverless]}
"""
    assert warnings_of(text) == [
        "cfg.yaml:7:17: models.m.policy.1: warning: policy 'later' is never consulted: rule 8 of policy 'r' decides "
        "every request",
        "cfg.yaml:15:9: policies.r.params.0: warning: rule 0 never decides for model 'm': it can never match: "
        "payload_bytes: {'gt': '6MB', 'lt': '4MB'} contradicts itself",
        "cfg.yaml:16:9: policies.r.params.1: warning: rule 1 never decides for model 'm': it can never match: "
        "saturation.realtime: {'gt': 1.0} is outside what it can be",
        "cfg.yaml:17:9: policies.r.params.2: warning: rule 2 never decides for model 'm': it can never match: "
        "caller: team-b names no tenant of the config's callers (nor anonymous)",
        "cfg.yaml:18:9: policies.r.params.3: warning: rule 3 never decides for model 'm': it can never match: "
        "cold.realtime: its backend has no serverless block, so it is never cold",
        "cfg.yaml:19:9: policies.r.params.4: warning: rule 4 never decides for model 'm': it can never match: "
        "the model has no async lane (queue_depth.async)",
        "cfg.yaml:20:9: policies.r.params.5: warning: rule 5 never decides for model 'm': it can never match: "
        "deadline_ms: {'lt': 100} contradicts the rule's other matchers",
        "cfg.yaml:21:9: policies.r.params.6: warning: rule 6 never decides for model 'm': it can never match: "
        "urgency: no urgency level is {'gt': 'critical'}",
    ]  # rule 7 (saturation.realtime >= 0.9) is alive


def test_a_rule_behind_one_that_matches_everything_it_matches_is_a_warning() -> None:
    text = RULES + """\
      - {when: {saturation.realtime: {gte: 0.8}}, route: serverless, fallback: [realtime]}
      - {when: {saturation.realtime: {gte: 0.9}, urgency: [critical, high]}, route: serverless}
      - {when: {saturation.realtime: {gte: 0.5}}, route: realtime, fallback: [serverless]}
      - {route: realtime}
      - {when: {urgency: low}, route: serverless}
"""
    assert warnings_of(text) == [
        "cfg.yaml:7:17: models.m.policy.1: warning: policy 'later' is never consulted: rule 3 of policy 'r' decides "
        "every request",
        "cfg.yaml:16:9: policies.r.params.1: warning: rule 1 never decides for model 'm': rule 0 before it matches "
        "every request it matches",
        "cfg.yaml:19:9: policies.r.params.4: warning: rule 4 never decides for model 'm': rule 3 before it matches "
        "every request it matches",
    ]  # rule 2 (a wider range than rule 0's) is alive


def test_a_rule_routing_to_a_lane_the_model_lacks_is_a_warning() -> None:
    text = RULES + "      - {when: {urgency: low}, route: async}\n      - {route: realtime, fallback: [serverless]}\n"
    assert warnings_of(text)[1] == (
        "cfg.yaml:15:39: policies.r.params.0.route: warning: rule 0 routes to the async lane, which model 'm' does "
        "not have: the engine skips the policy's decision (router_policy_skips_total)")


def test_a_lane_nothing_routes_to_is_a_warning() -> None:
    text = RULES.replace("policy: [r, later]", "policy: [r]").replace("  later: {type: shed}\n", "") + \
        "      - {route: realtime}\n"
    assert warnings_of(text) == [
        "cfg.yaml:6:39: models.m.lanes.serverless: warning: nothing routes to the serverless lane (backend 'sls'): "
        "no rule, fallback, deadline policy or default route names it",
    ]


OLD_LATENCY_FIRST_RULES = """\
      - {when: {cold.serverless: true}, route: realtime, reason: serverless_cold}
      - {when: {saturation.realtime: {gte: 1.0}, urgency: [critical, high]}, route: serverless,
         fallback: [realtime], reason: urgent_overflow}
      - {route: realtime, reason: realtime_only}
"""


def test_a_serverless_lane_every_route_to_which_needs_it_warm_never_warms_up() -> None:
    text = RULES.replace("policy: [r, later]", "policy: [d, r]").replace("later: {type: shed}",
                                                                           "d: {type: deadline}")
    assert warnings_of(text + OLD_LATENCY_FIRST_RULES) == [
        "cfg.yaml:6:39: models.m.lanes.serverless: warning: the serverless lane (backend 'sls') starts cold and "
        "nothing routes to it while it is cold: rule 0 of policy 'r' decides every request while it is cold, so it "
        "never warms up",
    ]
    assert warnings_of(text + OLD_LATENCY_FIRST_RULES.split("\n", 1)[1]) == []


def test_warnings_fail_check_only_under_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.yaml"
    path.write_text(RULES + "      - {route: realtime, fallback: [serverless]}\n      - {route: serverless}\n")
    assert main(["check", "--config", str(path)]) == 0
    assert main(["check", "--strict", "--config", str(path)]) == 1
    out = capsys.readouterr()
    assert f"{path}:16:9: policies.r.params.1: warning: rule 1 never decides" in out.err
    assert "ok (1 models, 2 backends, 2 policies, 2 warning(s))" in out.out


def test_check_reads_a_configmap_and_points_into_the_manifest(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    embedded = SAGEMAKER + "  m:\n    lanes: {realtime: rt, async: rt}\n"
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: r}\ndata:\n  router.yaml: |\n" + "".join(
        f"    {line}\n" for line in embedded.splitlines())
    path = tmp_path / "configmap.yaml"
    path.write_text(manifest)
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:12:38: models.m.lanes.async: the async lane's limit is 1GB (the default)")
    assert manifest.splitlines()[11][37:] == "rt}"


def test_the_shipped_configs_pass_check_strict(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTER_ADMIN_TOKEN", "a-token-for-the-check")
    files = [*sorted((ROOT / "policies").glob("*.yaml")), ROOT / "deploy/kubernetes/configmap.yaml"]
    assert len(files) == 5
    for path in files:
        assert main(["check", "--strict", "--config", str(path)]) == 0, capsys.readouterr().err


def test_make_lint_checks_every_policy_file_and_the_configmap() -> None:
    lint = subprocess.run(["make", "-n", "lint"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "for f in policies/*.yaml deploy/kubernetes/configmap.yaml" in lint
    assert "check --strict --config $f" in lint
