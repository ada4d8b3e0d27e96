"""Shadow policies: a model's candidate chain (``models.M.shadow``) decides on live traffic, beside the live
chain, without dispatching anything. Each pair of decisions is counted
(``router_shadow_decisions_total{model,live_lane,shadow_lane}``) with the estimated cost of both
(``router_shadow_estimated_cost_dollars_total{model,chain}``): what the candidate would have done and cost,
before it serves a single request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from router.cost import BackendCost
from router.policy.engine import PolicyEngine
from router.types import Lane, RequestFeatures, Route, Snapshot


class ShadowMetrics(Protocol):
    def shadow_decision(self, model: str, live_lane: str, shadow_lane: str, live_cost: float,
                        shadow_cost: float) -> None: ...


def estimated_cost(route: Route, snap: Snapshot, costs: Mapping[str, BackendCost]) -> float:
    """What serving ``route``'s first hop should cost now: one call of the backend's current latency (EWMA,
    plus a cold start if cold). Shed requests cost nothing."""
    if not route.hops:
        return 0.0
    hop = route.hops[0]
    cost = costs.get(hop.backend)
    state = snap.backends.get(hop.backend)
    if cost is None or state is None:
        return 0.0
    return cost.call(state.latency_s + (state.cold_start_s if state.cold else 0.0))


class Shadows:
    """The shadow chains of every model that has one, and what they decided so far."""

    def __init__(self, engine: PolicyEngine, models: frozenset[str], costs: Mapping[str, BackendCost],
                 metrics: ShadowMetrics | None = None) -> None:
        self.engine = engine  # its models' chains are the shadow chains
        self.models = models
        self.costs = costs
        self.metrics = metrics
        self.pairs: dict[tuple[str, str, str], int] = {}  # (model, live lane, shadow lane) -> decisions
        self.spent: dict[tuple[str, str], float] = {}  # (model, "live" | "shadow") -> estimated $

    def observe(self, req: RequestFeatures, snap: Snapshot, live: Route) -> Route:
        """Decide ``req`` by its model's shadow chain, on the snapshot the live chain saw; count both."""
        shadow = self.engine.decide(req, snap)
        model = req.model
        live_lane, shadow_lane = _lane(live), _lane(shadow)
        key = (model, live_lane, shadow_lane)
        self.pairs[key] = self.pairs.get(key, 0) + 1
        live_cost, shadow_cost = estimated_cost(live, snap, self.costs), estimated_cost(shadow, snap, self.costs)
        self.spent[(model, "live")] = self.spent.get((model, "live"), 0.0) + live_cost
        self.spent[(model, "shadow")] = self.spent.get((model, "shadow"), 0.0) + shadow_cost
        if self.metrics is not None:
            self.metrics.shadow_decision(model, live_lane, shadow_lane, live_cost, shadow_cost)
        return shadow

    def status(self) -> dict[str, Any]:
        """Per model: decisions by (live lane, shadow lane), how often they agreed, the estimated cost of
        each chain and the difference (shadow minus live). What a status page shows."""
        out: dict[str, Any] = {}
        for model in sorted(self.models):
            pairs = {f"{live}->{shadow}": n for (m, live, shadow), n in sorted(self.pairs.items()) if m == model}
            total = sum(pairs.values())
            same = sum(n for (m, live, shadow), n in self.pairs.items() if m == model and live == shadow)
            live_cost = self.spent.get((model, "live"), 0.0)
            shadow_cost = self.spent.get((model, "shadow"), 0.0)
            out[model] = {"decisions": total, "agreement": same / total if total else None, "pairs": pairs,
                          "estimated_cost": {"live": live_cost, "shadow": shadow_cost,
                                             "difference": shadow_cost - live_cost}}
        return out


def _lane(route: Route) -> str:
    return route.hops[0].lane.value if route.hops else Lane.SHED.value if route.decision.lane is Lane.SHED \
        else "none"
