from typing import Any

import pytest

from router.policy.errors import PolicyBuildError
from router.policy.registry import build_policy
from router.types import Decision, Lane
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
