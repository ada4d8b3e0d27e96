"""The policy engine: runs a model's policy chain and turns the first decision into a checked route."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from router.types import Decision, Hop, Lane, Policy, RequestFeatures, Route, Snapshot

log = structlog.get_logger("router.policy")

MAX_RETRY_AFTER_S = 3600.0
SkipHook = Callable[[str, str, str], None]  # (model, policy, why)


@dataclass(frozen=True, slots=True)
class ModelRoutes:
    """What the engine needs of one model: its lanes, their payload limits, its chain and default."""

    lanes: Mapping[Lane, str]
    limits: Mapping[Lane, int]
    chain: tuple[Policy, ...]
    default: Decision


class PolicyEngine:
    """First non-None decision of the chain wins. A policy that raises, names a lane the model lacks,
    names an unknown backend or routes a payload no lane of its route can take is skipped and counted.
    When every policy abstains the model's default route applies, so a request always has a route.
    """

    def __init__(self, models: Mapping[str, ModelRoutes], backends: frozenset[str],
                 on_skip: SkipHook | None = None) -> None:
        self._models = models
        self._backends = backends
        self._on_skip = on_skip

    def decide(self, req: RequestFeatures, snap: Snapshot) -> Route:
        model = self._models[req.model]
        for policy in model.chain:
            try:
                decision = policy.decide(req, snap)
            except Exception:
                log.exception("policy_raised", policy=policy.name, model=req.model)
                self._skip(req.model, policy.name, "raised")
                continue
            if decision is None:
                continue
            route = self._resolve(model, decision, req.payload_bytes)
            if isinstance(route, str):
                self._skip(req.model, policy.name, route)
                continue
            return route
        route = self._resolve(model, model.default, req.payload_bytes)
        if isinstance(route, Route):
            return route
        return self._any_lane_that_fits(model, req.payload_bytes)

    def _skip(self, model: str, policy: str, why: str) -> None:
        if self._on_skip is not None:
            self._on_skip(model, policy, why)

    def _resolve(self, model: ModelRoutes, d: Decision, payload: int) -> Route | str:
        """The route for a decision, or why it cannot be used."""
        if d.lane is Lane.SHED:
            retry = min(max(d.retry_after_s if d.retry_after_s is not None else 1.0, 0.0), MAX_RETRY_AFTER_S)
            status = d.status if d.status in (429, 503) else 429
            if retry != d.retry_after_s or status != d.status:
                d = Decision(d.lane, d.reason, policy=d.policy, retry_after_s=retry, status=status)
            return Route(d, ())
        backend = d.backend or model.lanes.get(d.lane)
        if backend is None:
            return "unknown_lane"
        if backend not in self._backends:
            return "unknown_backend"
        hops = [Hop(d.lane, backend)] if model.limits.get(d.lane, 0) >= payload else []
        seen = {backend}
        for lane in d.fallback:
            fb = model.lanes.get(lane)
            if fb is not None and fb not in seen and model.limits.get(lane, 0) >= payload:
                seen.add(fb)
                hops.append(Hop(lane, fb))
        if not hops:
            return "too_large"
        return Route(d, tuple(hops))

    @staticmethod
    def _any_lane_that_fits(model: ModelRoutes, payload: int) -> Route:
        hops = tuple(Hop(lane, b) for lane, b in model.lanes.items() if model.limits.get(lane, 0) >= payload)
        lane = hops[0].lane if hops else model.default.lane
        return Route(Decision(lane, reason="too_large_for_default", policy="default"), hops)
