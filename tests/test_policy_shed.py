from typing import Any

import pytest

from router.policy.errors import PolicyBuildError
from router.policy.registry import build_policy
from router.types import Lane
from tests.factories import LEVELS, req, snap


@pytest.mark.parametrize(
    ("urgency", "rt", "sls", "shed"),
    [
        ("low", 1.0, 1.0, True),  # everything full: low goes
        ("low", 1.0, 0.5, False),  # serverless still has room
        ("normal", 1.0, 1.0, False),  # not below the threshold
        ("critical", 1.0, 1.0, False),
        ("low", 0.0, 0.0, False),
    ],
)
def test_low_urgency_is_shed_only_when_every_lane_is_full(urgency: str, rt: float, sls: float, shed: bool) -> None:
    policy = build_policy("s", "shed", {"below_urgency": "normal", "retry_after": "2s"}, LEVELS)
    decision = policy.decide(req(urgency=urgency), snap(rt={"saturation": rt}, sls={"saturation": sls}))
    if shed:
        assert decision is not None
        assert (decision.lane, decision.retry_after_s, decision.status) == (Lane.SHED, 2.0, 429)
    else:
        assert decision is None


def test_threshold_and_lanes_are_configurable() -> None:
    params: dict[str, Any] = {"below_urgency": "high", "when_saturation_at_least": 0.8, "lanes": ["serverless"]}
    policy = build_policy("s", "shed", params, LEVELS)
    assert policy.decide(req(urgency="normal"), snap(sls={"saturation": 0.85})) is not None
    assert policy.decide(req(urgency="normal"), snap(sls={"saturation": 0.5})) is None
    assert policy.decide(req(urgency="high"), snap(sls={"saturation": 1.0})) is None


def test_abstains_when_the_model_has_none_of_its_lanes() -> None:
    policy = build_policy("s", "shed", {"lanes": ["serverless"]}, LEVELS)
    assert policy.decide(req(urgency="low"), snap(rt={"saturation": 1.0}, lanes=(Lane.REALTIME,))) is None


def test_unknown_level_is_a_build_error() -> None:
    with pytest.raises(PolicyBuildError, match="unknown urgency level 'lowest'"):
        build_policy("s", "shed", {"below_urgency": "lowest"}, LEVELS)


def test_a_shed_decision_names_its_policy_and_reason() -> None:
    policy = build_policy("s", "shed", {"reason": "too_busy"}, LEVELS)
    decision = policy.decide(req(urgency="low"), snap(rt={"saturation": 1.0}, sls={"saturation": 1.0}))
    assert decision is not None
    assert (policy.name, decision.policy, decision.reason) == ("s", "s", "too_busy")
    assert build_policy("s", "shed", {}, LEVELS).decide(
        req(urgency="low"), snap(rt={"saturation": 1.0}, sls={"saturation": 1.0})).reason == "shed_saturated"


def test_lanes_the_model_lacks_are_skipped_and_the_others_still_count() -> None:
    policy = build_policy("s", "shed", {}, LEVELS)  # lanes: realtime and serverless
    assert policy.decide(req(urgency="low"), snap(sls={"saturation": 1.0}, lanes=(Lane.SERVERLESS,))) is not None
