from typing import Any

import pytest

from router.policy.registry import build_policy
from router.types import BreakerState, Lane
from tests.factories import LEVELS, req, snap


def deadline(params: dict[str, Any] | None = None) -> Any:
    return build_policy("d", "deadline", params or {}, LEVELS)


@pytest.mark.parametrize(
    ("deadline_ms", "rt", "sls", "lane", "fallback"),
    [
        (None, {}, {}, None, ()),  # no deadline: abstain
        (500, {"latency_s": 0.05}, {"latency_s": 0.05}, None, ()),  # both fit: let others choose
        # a cold serverless backend (2 s start) misses 500 ms: realtime only
        (500, {"latency_s": 0.05}, {"latency_s": 0.05, "cold": True, "cold_start_s": 2.0}, Lane.REALTIME, ()),
        # realtime is full and 4 wait ahead (5 slot turns of 25 ms) and slow: serverless only
        (150, {"latency_s": 0.1, "inflight": 4, "queue_depth": 4, "queue_levels": ((1, 4),)}, {"latency_s": 0.05},
         Lane.SERVERLESS, ()),
        # an open breaker never fits
        (500, {"breaker": BreakerState.OPEN}, {"latency_s": 0.05}, Lane.SERVERLESS, ()),
    ],
)
def test_lanes_that_would_miss_the_deadline_are_skipped(deadline_ms: int | None, rt: dict[str, Any],
                                                        sls: dict[str, Any], lane: Lane | None,
                                                        fallback: tuple[Lane, ...]) -> None:
    decision = deadline().decide(req(deadline_ms=deadline_ms), snap(rt=rt, sls=sls))
    if lane is None:
        assert decision is None
    else:
        assert decision is not None
        assert (decision.lane, decision.fallback, decision.reason) == (lane, fallback, "deadline")


def test_no_lane_in_time_sheds_with_503_so_the_client_fails_fast() -> None:
    decision = deadline().decide(req(deadline_ms=10), snap(rt={"latency_s": 0.2}, sls={"latency_s": 0.3}))
    assert decision is not None
    assert (decision.lane, decision.status, decision.reason) == (Lane.SHED, 503, "deadline_unmeetable")


def test_on_miss_abstain_leaves_the_choice_to_later_policies() -> None:
    policy = deadline({"on_miss": "abstain"})
    assert policy.decide(req(deadline_ms=10), snap(rt={"latency_s": 0.2}, sls={"latency_s": 0.3})) is None


def test_margin_makes_the_estimate_pessimistic() -> None:
    s = snap(rt={"latency_s": 0.09}, sls={"latency_s": 0.2})
    assert deadline().decide(req(deadline_ms=100), s).lane is Lane.REALTIME
    assert deadline({"margin": 1.5}).decide(req(deadline_ms=100), s).lane is Lane.SHED
