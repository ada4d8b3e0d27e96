from typing import Any

import pytest

from router.policy.engine import ModelRoutes, PolicyEngine
from router.types import Decision, Hop, Lane, RequestFeatures, Snapshot
from tests.factories import req, snap


class Fixed:
    def __init__(self, name: str, decision: Decision | None) -> None:
        self.name = name
        self.decision = decision

    def decide(self, r: RequestFeatures, s: Snapshot) -> Decision | None:
        return self.decision


class Raises:
    name = "broken"

    def decide(self, r: RequestFeatures, s: Snapshot) -> Decision | None:
        raise RuntimeError("bug in a plugin")


def engine(*chain: Any, skipped: list[tuple[str, str, str]] | None = None) -> PolicyEngine:
    routes = ModelRoutes(
        lanes={Lane.REALTIME: "rt", Lane.SERVERLESS: "sls"},
        limits={Lane.REALTIME: 6_000_000, Lane.SERVERLESS: 4_000_000},
        chain=chain,
        default=Decision(Lane.REALTIME, "default", fallback=(Lane.SERVERLESS,), policy="default"),
    )
    hook = (lambda m, p, w: skipped.append((m, p, w))) if skipped is not None else None
    return PolicyEngine({"m": routes}, {"rt": None, "sls": None, "other": None, "sm-async": frozenset({"async"})},
                        hook)


def test_first_non_none_decision_wins() -> None:
    route = engine(Fixed("a", None), Fixed("b", Decision(Lane.SERVERLESS, "b_says", policy="b")),
                   Fixed("c", Decision(Lane.REALTIME, "c_says"))).decide(req(), snap())
    assert route.decision.reason == "b_says"
    assert route.hops == (Hop(Lane.SERVERLESS, "sls"),)


def test_all_abstain_means_the_models_default_route() -> None:
    route = engine(Fixed("a", None)).decide(req(), snap())
    assert route.decision.reason == "default"
    assert route.hops == (Hop(Lane.REALTIME, "rt"), Hop(Lane.SERVERLESS, "sls"))


def test_a_raising_policy_is_skipped_and_counted() -> None:
    skipped: list[tuple[str, str, str]] = []
    route = engine(Raises(), Fixed("b", Decision(Lane.SERVERLESS, "ok")), skipped=skipped).decide(req(), snap())
    assert route.decision.reason == "ok"
    assert skipped == [("m", "broken", "raised")]


def test_unknown_backend_and_missing_lane_are_skipped_and_counted() -> None:
    skipped: list[tuple[str, str, str]] = []
    route = engine(
        Fixed("ghost", Decision(Lane.REALTIME, "x", backend="nope")),
        Fixed("batchy", Decision(Lane.BATCH, "x")),
        skipped=skipped,
    ).decide(req(), snap())
    assert route.decision.reason == "default"
    assert skipped == [("m", "ghost", "unknown_backend"), ("m", "batchy", "unknown_lane")]


def test_a_backend_named_for_a_lane_it_cannot_serve_is_skipped_and_counted() -> None:
    skipped: list[tuple[str, str, str]] = []
    route = engine(Fixed("sync-to-async-only", Decision(Lane.REALTIME, "x", backend="sm-async")),
                   skipped=skipped).decide(req(), snap())
    assert route.decision.reason == "default"
    assert skipped == [("m", "sync-to-async-only", "backend_not_for_lane")]


def test_a_named_backend_overrides_the_lane_table() -> None:
    route = engine(Fixed("a", Decision(Lane.REALTIME, "x", backend="other"))).decide(req(), snap())
    assert route.hops == (Hop(Lane.REALTIME, "other"),)


def test_lanes_too_small_for_the_payload_drop_out_of_the_route() -> None:
    decision = Decision(Lane.SERVERLESS, "sls_first", fallback=(Lane.REALTIME,))
    route = engine(Fixed("a", decision)).decide(req(payload_bytes=5_000_000), snap())
    assert route.hops == (Hop(Lane.REALTIME, "rt"),)  # 5 MB is over serverless's 4 MB


def test_a_decision_no_lane_can_take_is_skipped() -> None:
    skipped: list[tuple[str, str, str]] = []
    route = engine(Fixed("a", Decision(Lane.SERVERLESS, "x")), skipped=skipped).decide(
        req(payload_bytes=5_000_000), snap())
    assert skipped == [("m", "a", "too_large")]
    assert route.hops == (Hop(Lane.REALTIME, "rt"),)


def test_shed_decisions_are_clamped() -> None:
    route = engine(Fixed("a", Decision(Lane.SHED, "x", retry_after_s=1e9, status=418))).decide(req(), snap())
    assert route.hops == ()
    assert (route.decision.retry_after_s, route.decision.status) == (3600.0, 429)


def test_fallback_never_repeats_the_primary_backend() -> None:
    decision = Decision(Lane.REALTIME, "x", fallback=(Lane.REALTIME, Lane.SERVERLESS, Lane.SERVERLESS))
    route = engine(Fixed("a", decision)).decide(req(), snap())
    assert route.hops == (Hop(Lane.REALTIME, "rt"), Hop(Lane.SERVERLESS, "sls"))


class BySaturation:
    """Reads the snapshot: serverless while realtime is full."""

    name = "by-saturation"

    def decide(self, r: RequestFeatures, s: Snapshot) -> Decision | None:
        rt = s.lane(Lane.REALTIME)
        return Decision(Lane.SERVERLESS, "rt_full") if rt is not None and rt.saturation >= 1.0 else None


def jobs_engine(*chain: Any, async_without_prefer: bool = False,
                skipped: list[tuple[str, str, str]] | None = None) -> PolicyEngine:
    routes = ModelRoutes(
        lanes={Lane.REALTIME: "rt", Lane.ASYNC: "rt", Lane.SERVERLESS: "sls", Lane.BATCH: "rt"},
        limits={Lane.REALTIME: 1000, Lane.ASYNC: 50_000},  # serverless and batch: no limit configured
        chain=chain,
        default=Decision(Lane.REALTIME, "default", fallback=(Lane.ASYNC,), policy="default"),
        async_without_prefer=async_without_prefer,
    )
    hook = (lambda m, p, w: skipped.append((m, p, w))) if skipped is not None else None
    return PolicyEngine({"m": routes}, {"rt": None, "sls": None}, hook)


def test_policies_decide_on_the_snapshot_they_are_given() -> None:
    e = engine(BySaturation())
    assert e.decide(req(), snap(rt={"saturation": 1.0})).decision.reason == "rt_full"
    assert e.decide(req(), snap(rt={"saturation": 0.5})).decision.reason == "default"


def test_a_payload_exactly_at_a_lanes_limit_fits_and_one_byte_more_does_not() -> None:
    e = engine(Fixed("a", Decision(Lane.SERVERLESS, "x", fallback=(Lane.REALTIME,))))
    assert e.decide(req(payload_bytes=4_000_000), snap()).hops[0] == Hop(Lane.SERVERLESS, "sls")
    assert e.decide(req(payload_bytes=4_000_001), snap()).hops == (Hop(Lane.REALTIME, "rt"),)


def test_job_lanes_are_kept_only_for_clients_that_allowed_a_202() -> None:
    big = {"payload_bytes": 5000}  # over realtime's limit: only the async lane takes it
    assert jobs_engine().decide(req(**big, accepts_async=True), snap()).hops == (Hop(Lane.ASYNC, "rt"),)
    assert jobs_engine(async_without_prefer=True).decide(req(**big), snap()).hops == (Hop(Lane.ASYNC, "rt"),)
    assert jobs_engine().decide(req(**big), snap()).hops == ()  # no 202 allowed: nothing can take it


def test_why_a_job_route_is_skipped_says_whether_the_client_or_the_size_was_the_reason() -> None:
    skipped: list[tuple[str, str, str]] = []
    jobs_engine(Fixed("to-async", Decision(Lane.ASYNC, "x")), skipped=skipped).decide(req(payload_bytes=10), snap())
    jobs_engine(Fixed("to-async", Decision(Lane.ASYNC, "x")), skipped=skipped).decide(
        req(payload_bytes=60_000, accepts_async=True), snap())
    jobs_engine(Fixed("to-async", Decision(Lane.ASYNC, "x")), skipped=skipped).decide(req(payload_bytes=50_000), snap())
    jobs_engine(Fixed("to-batch", Decision(Lane.BATCH, "x")), skipped=skipped).decide(req(payload_bytes=1), snap())
    assert skipped == [("m", "to-async", "async_not_accepted"), ("m", "to-async", "too_large"),
                       ("m", "to-async", "async_not_accepted"),  # exactly at the limit: only the 202 was missing
                       ("m", "to-batch", "too_large")]  # a job lane without a limit takes nothing


def test_a_lane_without_a_limit_takes_no_payload() -> None:
    route = jobs_engine(Fixed("a", Decision(Lane.SERVERLESS, "x", fallback=(Lane.REALTIME,)))).decide(
        req(payload_bytes=1), snap())
    assert route.hops == (Hop(Lane.REALTIME, "rt"),)


def test_when_the_default_route_cannot_take_the_payload_any_lane_that_fits_does() -> None:
    routes = ModelRoutes(lanes={Lane.REALTIME: "rt", Lane.SERVERLESS: "sls"},
                         limits={Lane.REALTIME: 1000, Lane.SERVERLESS: 2000}, chain=(),
                         default=Decision(Lane.REALTIME, "default", policy="default"))
    e = PolicyEngine({"m": routes}, {"rt": None, "sls": None})
    route = e.decide(req(payload_bytes=1500), snap())
    assert route.hops == (Hop(Lane.SERVERLESS, "sls"),)
    assert (route.decision.lane, route.decision.reason, route.decision.policy) == (
        Lane.SERVERLESS, "too_large_for_default", "default")
    nothing = e.decide(req(payload_bytes=2001), snap())
    assert (nothing.hops, nothing.decision.lane) == ((), Lane.REALTIME)


@pytest.mark.parametrize(("retry", "status", "expected"), [
    (None, 503, (1.0, 503)),  # no Retry-After given: one second
    (0.5, 429, (0.5, 429)),
    (-3.0, 429, (0.0, 429)),
    (2.0, 418, (2.0, 429)),  # only 429 and 503 shed
])
def test_shed_decisions_keep_what_is_valid_and_clamp_the_rest(retry: float | None, status: int,
                                                              expected: tuple[float, int]) -> None:
    decision = Decision(Lane.SHED, "busy", policy="a", retry_after_s=retry, status=status)
    route = engine(Fixed("a", decision)).decide(req(), snap())
    d = route.decision
    assert (d.retry_after_s, d.status) == expected
    assert (d.lane, d.reason, d.policy, route.hops) == (Lane.SHED, "busy", "a", ())


def test_a_valid_shed_decision_is_passed_on_as_the_policy_made_it() -> None:
    decision = Decision(Lane.SHED, "busy", policy="a", retry_after_s=2.0, status=503)
    assert engine(Fixed("a", decision)).decide(req(), snap()).decision is decision
