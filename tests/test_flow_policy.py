"""What policies and the engine see of the admission queues, and the queue's config keys. Pure: no servers."""

from __future__ import annotations

import pytest

from router.config import parse_config
from router.policy.engine import ModelRoutes, PolicyEngine
from router.policy.registry import build_policy
from router.types import Decision, Hop, Lane
from tests.factories import LEVELS, req, snap
from tests.test_config import MINIMAL, issues_of

FULL = {"inflight": 4, "capacity": 4, "saturation": 1.0, "latency_s": 0.1}


def test_the_snapshot_predicts_the_wait_of_each_urgency_behind_the_queue() -> None:
    free = snap().lane(Lane.REALTIME)
    busy = snap(rt={**FULL, "queue_depth": 7, "queue_levels": ((3, 1), (2, 2), (0, 4))}).lane(Lane.REALTIME)
    assert free is not None
    assert busy is not None
    assert free.wait_for(0) == free.expected_wait_s == 0.0
    assert busy.wait_for(3) == pytest.approx(2 * 0.1 / 4)  # behind 1 critical: its own turn plus one
    assert busy.wait_for(1) == pytest.approx(4 * 0.1 / 4)  # behind critical and high
    assert busy.expected_wait_s == pytest.approx(8 * 0.1 / 4)  # behind everyone
    assert not busy.available


@pytest.mark.parametrize(("when", "urgency", "matches"), [
    ({"queue_depth.realtime": {"gte": 5}}, "low", True),
    ({"queue_depth.realtime": {"gte": 8}}, "low", False),
    ({"expected_wait.realtime": {"gt": "150ms"}}, "low", True),  # 0.2 s behind all 7
    ({"expected_wait.realtime": {"gt": "150ms"}}, "critical", False),  # 0.05 s behind one critical
    ({"expected_wait.serverless": {"lt": "1ms"}}, "low", True),  # serverless is free
])
def test_rules_match_on_queue_depth_and_this_requests_expected_wait(when: dict[str, object], urgency: str,
                                                                    matches: bool) -> None:
    policy = build_policy("r", "rules", [{"when": when, "route": "serverless", "reason": "queue"}], LEVELS)
    s = snap(rt={**FULL, "queue_depth": 7, "queue_levels": ((3, 1), (2, 2), (0, 4))})
    decision = policy.decide(req(urgency=urgency), s)
    assert (decision is not None) is matches


def test_the_deadline_policy_counts_the_queue_wait_of_the_requests_own_urgency() -> None:
    policy = build_policy("d", "deadline", {}, LEVELS)
    # 100 low requests wait for the realtime backend: 2.5 s for another low one, 25 ms for a critical one
    s = snap(rt={**FULL, "queue_depth": 100, "queue_levels": ((0, 100),)}, sls={"latency_s": 0.5})
    low = policy.decide(req(urgency="low", deadline_ms=1000), s)
    critical = policy.decide(req(urgency="critical", deadline_ms=1000), s)
    assert low == Decision(Lane.SERVERLESS, reason="deadline", policy="d")
    assert critical is None  # every lane fits a critical request: the deadline policy lets others choose


def engine(lanes: dict[Lane, str], shed: Decision) -> PolicyEngine:
    class Shed:
        name = "shed-low"

        def decide(self, r: object, s: object) -> Decision:
            return shed

    limits = {Lane.REALTIME: 6_000_000, Lane.ASYNC: 1_000_000_000, Lane.BATCH: 6_000_000}
    routes = ModelRoutes(lanes=lanes, limits={k: v for k, v in limits.items() if k in lanes}, chain=(Shed(),),
                         default=Decision(Lane.REALTIME, "default"))
    return PolicyEngine({"m": routes}, {name: None for name in lanes.values()})


SHED = Decision(Lane.SHED, "shed_saturated", policy="shed-low", retry_after_s=2.0)


def test_a_shed_becomes_a_job_on_the_async_lane_for_a_client_that_allowed_a_202() -> None:
    e = engine({Lane.REALTIME: "rt", Lane.ASYNC: "jobs", Lane.BATCH: "rt"}, SHED)
    deferred = e.decide(req(accepts_async=True), snap())
    assert deferred.hops == (Hop(Lane.ASYNC, "jobs"),)
    assert (deferred.decision.reason, deferred.decision.deferred_from) == ("deferred_shed_saturated",
                                                                         "shed_saturated")
    assert e.decide(req(), snap()).decision.lane is Lane.SHED  # no Prefer: respond-async, no job


def test_without_an_async_lane_a_shed_is_deferred_to_batch_only_when_the_body_is_records() -> None:
    e = engine({Lane.REALTIME: "rt", Lane.BATCH: "rt"}, SHED)
    assert e.decide(req(accepts_async=True), snap()).hops == (Hop(Lane.BATCH, "rt"),)
    octets = req(accepts_async=True, content_type="application/octet-stream")
    assert e.decide(octets, snap()).decision.lane is Lane.SHED  # the batch lane cannot split it into records
    assert e.decide(req(accepts_async=True, payload_bytes=7_000_000), snap()).decision.lane is Lane.SHED


def test_queue_keys_and_caller_weights_have_defaults_and_are_validated_at_their_position() -> None:
    cfg = parse_config(MINIMAL, "cfg.yaml", {})
    assert (cfg.backends["rt"].queue.max_depth, cfg.backends["rt"].queue.max_wait) == (1024, 1.0)
    text = MINIMAL.replace('url: "http://127.0.0.1:9/invocations"}',
                           'url: "http://127.0.0.1:9/invocations",\n      queue: {max_depth: -1, max_wait: 2x}}')
    text = "callers:\n  - {api_key: key-of-team-a, tenant: a, weight: 0}\n" + text
    assert issues_of(text) == [
        "cfg.yaml:2:49: callers.0.weight: Input should be greater than 0",
        "cfg.yaml:5:26: backends.rt.queue.max_depth: Input should be greater than or equal to 0",
        "cfg.yaml:5:40: backends.rt.queue.max_wait: invalid duration '2x': use units ms, s, m, h, d (e.g. '250ms', "
        "'60s')",
    ]


def test_a_backend_with_no_call_finished_predicts_a_shared_cold_start_not_a_fraction_of_it() -> None:
    from router.flow.admission import Admission, QueueSettings
    from router.flow.queue import Waiter
    from router.state import BackendTracker, TrackerSettings

    cold = BackendTracker("sls", TrackerSettings(max_concurrency=8, serverless=True, cold_start_s=2.0),
                          clock=lambda: 0.0)
    admission = Admission("sls", cold, QueueSettings())
    for _ in range(8):
        cold.start(0.0)  # eight calls in their cold start together
    assert admission.predict(1) == (0, 2.0)  # the first slot frees when the cold start ends, not in 2 s / 8
    for _ in range(8):
        admission.queue.push(Waiter(1, "anonymous"))
    assert admission.predict(1) == (8, 4.0)
