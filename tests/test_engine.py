from typing import Any

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
