from typing import Any

import pytest

from router.policy.errors import PolicyBuildError
from router.policy.registry import build_policy
from router.types import BreakerState, Decision, Lane
from tests.factories import LEVELS, req, snap

RULES: list[dict[str, Any]] = [
    {"when": {"payload_bytes": {"gt": "4MB"}}, "route": "realtime", "reason": "big"},
    {"when": {"urgency": "low", "accepts_async": True}, "route": "shed", "reason": "low_async"},
    {"when": {"saturation.realtime": {"gte": 0.9}}, "route": "serverless", "fallback": ["realtime"],
     "reason": "rt_busy"},
    {"when": {"cold.serverless": True, "urgency": {"gte": "high"}}, "route": "realtime", "reason": "urgent_cold"},
    {"when": {"caller": ["team-a"], "content_type": "application/json"}, "route": "serverless", "reason": "team_a"},
    {"when": {"has_deadline": True, "deadline_ms": {"lt": 50}}, "route": "realtime", "reason": "tight"},
    {"route": "realtime", "fallback": ["serverless"]},
]


def decide(request: Any, snapshot: Any) -> Decision | None:
    return build_policy("r", "rules", RULES, LEVELS).decide(request, snapshot)


@pytest.mark.parametrize(
    ("request_kw", "snap_kw", "lane", "reason"),
    [
        ({"payload_bytes": 5_000_000}, {}, Lane.REALTIME, "big"),
        ({"urgency": "low", "accepts_async": True}, {}, Lane.SHED, "low_async"),
        ({"urgency": "low"}, {"rt": {"saturation": 0.95}}, Lane.SERVERLESS, "rt_busy"),
        ({}, {"rt": {"saturation": 0.5}}, Lane.REALTIME, "rule_6"),
        ({"urgency": "critical"}, {"sls": {"cold": True}}, Lane.REALTIME, "urgent_cold"),
        ({"urgency": "normal"}, {"sls": {"cold": True}}, Lane.REALTIME, "rule_6"),
        ({"caller": "team-a", "content_type": "Application/JSON; charset=utf-8"}, {}, Lane.SERVERLESS, "team_a"),
        ({"caller": "team-b", "content_type": "application/json"}, {}, Lane.REALTIME, "rule_6"),
        ({"deadline_ms": 20}, {}, Lane.REALTIME, "tight"),
        ({"deadline_ms": 200}, {}, Lane.REALTIME, "rule_6"),
    ],
)
def test_first_matching_rule_decides(request_kw: dict[str, Any], snap_kw: dict[str, Any], lane: Lane,
                                     reason: str) -> None:
    decision = decide(req(**request_kw), snap(**snap_kw))
    assert decision is not None
    assert (decision.lane, decision.reason, decision.policy) == (lane, reason, "r")


def test_fallback_chain_is_carried_in_the_decision() -> None:
    decision = decide(req(), snap(rt={"saturation": 1.0}))
    assert decision is not None
    assert decision.fallback == (Lane.REALTIME,)


def test_a_lane_the_model_lacks_never_matches() -> None:
    policy = build_policy("r", "rules", [{"when": {"saturation.serverless": {"gte": 0.0}}, "route": "serverless"}],
                          LEVELS)
    assert policy.decide(req(), snap(lanes=(Lane.REALTIME,))) is None
    assert policy.decide(req(), snap()) is not None


def test_rules_abstain_when_nothing_matches() -> None:
    policy = build_policy("r", "rules", [{"when": {"urgency": "critical"}, "route": "realtime"}], LEVELS)
    assert policy.decide(req(urgency="low"), snap()) is None


def test_shed_rule_carries_retry_after_and_status() -> None:
    policy = build_policy("r", "rules", [{"route": "shed", "retry_after": "3s", "status": 503}], LEVELS)
    decision = policy.decide(req(), snap())
    assert decision is not None
    assert (decision.lane, decision.retry_after_s, decision.status) == (Lane.SHED, 3.0, 503)


@pytest.mark.parametrize(
    ("rule", "where", "message"),
    [
        ({"when": {"urgency": "urgent"}, "route": "realtime"}, (0, "when", "urgency"), "unknown urgency level"),
        ({"when": {"breaker.realtime": "ajar"}, "route": "realtime"}, (0, "when", "breaker.realtime"), "breaker"),
        ({"when": {"payload_bytes": {"about": 5}}, "route": "realtime"}, (0, "when", "payload_bytes", "about"),
         "unknown comparison"),
        ({"when": {"accepts_async": "yes"}, "route": "realtime"}, (0, "when", "accepts_async"), "true or false"),
        ({"route": "shed", "fallback": ["realtime"]}, (0, "route"), "no fallback"),
    ],
)
def test_bad_rules_name_the_place(rule: dict[str, Any], where: tuple[Any, ...], message: str) -> None:
    with pytest.raises(PolicyBuildError) as info:
        build_policy("r", "rules", [rule], LEVELS)
    assert info.value.issues[0][0] == where
    assert message in info.value.issues[0][1]


NOT_CHOICES = "expected a string or a list of strings"


def rules(*params: dict[str, Any]) -> Any:
    return build_policy("r", "rules", list(params), LEVELS)


def build_error(rule: dict[str, Any]) -> PolicyBuildError:
    with pytest.raises(PolicyBuildError) as info:
        rules(rule)
    return info.value


def test_a_number_alone_matches_that_value_and_never_a_missing_one() -> None:
    policy = rules({"when": {"deadline_ms": 250}, "route": "serverless"})
    assert policy.decide(req(deadline_ms=250), snap()) is not None
    assert policy.decide(req(deadline_ms=251), snap()) is None
    assert policy.decide(req(), snap()) is None  # no deadline at all


def test_content_types_match_whatever_their_case_but_other_choices_are_exact() -> None:
    by_type = rules({"when": {"content_type": "Application/JSON"}, "route": "serverless"})
    assert by_type.decide(req(content_type="application/json"), snap()) is not None
    by_caller = rules({"when": {"caller": "Team-A"}, "route": "serverless"})
    assert by_caller.decide(req(caller="Team-A"), snap()) is not None
    assert by_caller.decide(req(caller="team-a"), snap()) is None


def test_urgency_takes_a_level_a_list_of_levels_or_a_comparison() -> None:
    listed = rules({"when": {"urgency": ["low", "high"]}, "route": "serverless"})
    assert [listed.decide(req(urgency=u), snap()) is not None for u in ("low", "normal", "high")] == [
        True, False, True]


def test_breaker_takes_one_state_or_a_list() -> None:
    policy = rules({"when": {"breaker.realtime": ["open", "half_open"]}, "route": "serverless"})
    assert policy.decide(req(), snap(rt={"breaker": BreakerState.HALF_OPEN})) is not None
    assert policy.decide(req(), snap()) is None


def test_a_rule_may_name_its_backend_and_only_shed_rules_carry_retry_after() -> None:
    policy = rules({"when": {"urgency": "low"}, "route": "realtime", "backend": "big-rt"},
                   {"route": "realtime"})
    pinned = policy.decide(req(urgency="low"), snap())
    plain = policy.decide(req(), snap())
    assert pinned is not None
    assert plain is not None
    assert (pinned.backend, plain.backend, plain.retry_after_s) == ("big-rt", None, None)
    assert policy.name == "r"


@pytest.mark.parametrize(
    ("rule", "where", "message"),
    [
        ({"when": {"payload_bytes": True}, "route": "realtime"}, (0, "when", "payload_bytes"), "expected a number"),
        ({"when": {"payload_bytes": {}}, "route": "realtime"}, (0, "when", "payload_bytes"),
         "expected at least one of gt, gte, lt, lte, eq, ne"),
        ({"when": {"caller": []}, "route": "realtime"}, (0, "when", "caller"), NOT_CHOICES),
        ({"when": {"caller": 5}, "route": "realtime"}, (0, "when", "caller"), NOT_CHOICES),
        ({"when": {"urgency": 5}, "route": "realtime"}, (0, "when", "urgency"), NOT_CHOICES),
        ({"when": {"urgency": ["critical", "urgentish"]}, "route": "realtime"}, (0, "when", "urgency"),
         "unknown urgency level 'urgentish'"),
        ({"when": {"urgency": {"gte": "urgentish"}}, "route": "realtime"}, (0, "when", "urgency", "gte"),
         "unknown urgency level"),
        ({"when": {"urgency": {"about": "high"}}, "route": "realtime"}, (0, "when", "urgency", "about"),
         "unknown comparison 'about'"),
        ({"when": {"saturation.realtime": {"about": 1}}, "route": "realtime"},
         (0, "when", "saturation.realtime", "about"), "unknown comparison"),
        ({"when": {"breaker.realtime": ["open", "ajar"]}, "route": "realtime"}, (0, "when", "breaker.realtime"),
         "unknown breaker state 'ajar'"),
        ({"when": {"breaker.realtime": 5}, "route": "realtime"}, (0, "when", "breaker.realtime"),
         NOT_CHOICES),
        ({"when": {"cold.serverless": "yes"}, "route": "realtime"}, (0, "when", "cold.serverless"),
         "expected true or false"),
        ({"when": {"xyzzy": "red"}, "route": "realtime"}, (0, "when", "xyzzy"), "unknown matcher 'xyzzy' ("),
        ({"route": "shed", "backend": "rt"}, (0, "route"), "a shed rule takes no fallback or backend"),
    ],
)
def test_each_bad_matcher_is_named_with_its_place(rule: dict[str, Any], where: tuple[Any, ...], message: str) -> None:
    err = build_error(rule)
    assert (err.path, err.issues[0][0]) == (where, where)
    assert err.message.startswith(message)


def test_an_unknown_matcher_lists_the_known_ones() -> None:
    assert "accepts_async, available.<lane>, breaker.<lane>, caller," in build_error(
        {"when": {"xyzzy": "red"}, "route": "realtime"}).message


def test_every_problem_of_a_policy_is_reported_at_once() -> None:
    with pytest.raises(PolicyBuildError) as info:
        rules({"when": {"urgency": "urgentish"}, "route": "realtime"},
              {"when": {"cold.serverless": "yes"}, "route": "realtime"})
    err = info.value
    assert [path for path, _ in err.issues] == [(0, "when", "urgency"), (1, "when", "cold.serverless")]
    assert (err.path, err.message) == err.issues[0]
    assert str(err) == "; ".join(message for _, message in err.issues)
