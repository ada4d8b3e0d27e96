"""The policy engine: runs a model's policy chain and turns the first decision into a checked route."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from router.batch.records import record_format
from router.types import JOB_LANES, Decision, Hop, Lane, Policy, RequestFeatures, Route, Snapshot

log = structlog.get_logger("router.policy")

MAX_RETRY_AFTER_S = 3600.0
SkipHook = Callable[[str, str, str], None]  # (model, policy, why)
ROUTE_CACHE_SIZE = 4096  # resolved routes kept per model (policies that make a new Decision per request churn it)
_SHED = Lane.SHED  # enum reads cost ~0.1 µs each in Python 3.11


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one policy of a chain did with a request, for ``explain``: decided, abstained or skipped (and why:
    the reason code, or the engine's reason for skipping it)."""

    policy: str
    outcome: str  # "decided" | "abstained" | "skipped"
    why: str | None = None
    decision: Decision | None = None


@dataclass(frozen=True, slots=True)
class ModelRoutes:
    """What the engine needs of one model: its lanes, their payload limits, its chain and default."""

    lanes: Mapping[Lane, str]
    limits: Mapping[Lane, int]
    chain: tuple[Policy, ...]
    default: Decision
    async_without_prefer: bool = False  # the model answers 202 even to clients that did not ask for it


class PolicyEngine:
    """First non-None decision of the chain wins. A policy that raises, names a lane the model lacks,
    names an unknown backend (or one that cannot serve the lane) or routes a payload no lane of its route can take
    is skipped and counted.
    When every policy abstains the model's default route applies, so a request always has a route.
    Job lanes (async, batch) are dropped from routes of clients that did not allow a 202.
    Defer instead of shed: a shed decision for a client that allowed a 202 becomes a job on the model's
    job lane (``deferral``), when it has one that takes the request.
    """

    def __init__(self, models: Mapping[str, ModelRoutes], backends: Mapping[str, frozenset[str] | None],
                 on_skip: SkipHook | None = None) -> None:
        """``backends``: every backend by name, with the lanes it may serve (None: any lane)."""
        self._models = models
        self._backends = backends
        self._on_skip = on_skip
        # A decision's route depends on the request only through whether it may become a job and which lanes' size
        # limits its payload is within: per model, the distinct limits (a payload's class is how many it exceeds),
        # and the routes resolved so far by (decision, job lanes allowed, size class), each with its decision.
        self._sizes = {name: sorted({0, *m.limits.values()}) for name, m in models.items()}
        self._routes: dict[str, dict[tuple[int, bool, int], tuple[Decision, Route | str]]] = {
            name: {} for name in models}

    def decide(self, req: RequestFeatures, snap: Snapshot, verdicts: list[Verdict] | None = None) -> Route:
        """The route for ``req``. ``verdicts``, if given (explain), receives each policy's verdict in chain order."""
        model = self._models[req.model]
        for policy in model.chain:
            try:
                decision = policy.decide(req, snap)
            except Exception as exc:
                log.exception("policy_raised", policy=policy.name, model=req.model)
                self._skip(req.model, policy.name, "raised")
                if verdicts is not None:
                    verdicts.append(Verdict(policy.name, "skipped", f"raised {type(exc).__name__}"))
                continue
            if decision is None:
                if verdicts is not None:
                    verdicts.append(Verdict(policy.name, "abstained"))
                continue
            route = self._cached_resolve(model, decision, req)
            if isinstance(route, str):
                self._skip(req.model, policy.name, route)
                if verdicts is not None:
                    verdicts.append(Verdict(policy.name, "skipped", route, decision))
                continue
            if verdicts is not None:
                verdicts.append(Verdict(policy.name, "decided", decision.reason, decision))
            if decision.lane is _SHED and (hop := self._deferral(model, req)) is not None:
                d = route.decision
                return Route(Decision(hop.lane, reason=f"deferred_{d.reason}", policy=d.policy,
                                      deferred_from=d.reason), (hop,))
            return route
        route = self._cached_resolve(model, model.default, req)
        if verdicts is not None:
            verdicts.append(Verdict("default", "decided" if isinstance(route, Route) else "skipped",
                                    "default" if isinstance(route, Route) else route, model.default))
        if isinstance(route, Route):
            return route
        return self._any_lane_that_fits(model, req)

    def deferral(self, req: RequestFeatures) -> Hop | None:
        """Where a request the sync lanes cannot take becomes a job, if its client allowed a 202: the model's
        async lane (any payload, answered as soon as its backend has room), else its batch lane when the
        body is records the batch lane can read. None: the client gets its 429/503."""
        return self._deferral(self._models[req.model], req)

    @classmethod
    def _deferral(cls, model: ModelRoutes, req: RequestFeatures) -> Hop | None:
        if not (req.accepts_async or model.async_without_prefer):
            return None
        backend = model.lanes.get(Lane.ASYNC)
        if backend is not None and cls._usable(model, Lane.ASYNC, req):
            return Hop(Lane.ASYNC, backend)
        backend = model.lanes.get(Lane.BATCH)
        if backend is not None and cls._usable(model, Lane.BATCH, req) and record_format(req.content_type):
            return Hop(Lane.BATCH, backend)
        return None

    def _skip(self, model: str, policy: str, why: str) -> None:
        if self._on_skip is not None:
            self._on_skip(model, policy, why)

    @staticmethod
    def _usable(model: ModelRoutes, lane: Lane, req: RequestFeatures) -> bool:
        if lane in JOB_LANES and not (req.accepts_async or model.async_without_prefer):
            return False
        return model.limits.get(lane, 0) >= req.payload_bytes

    def _cached_resolve(self, model: ModelRoutes, d: Decision, req: RequestFeatures) -> Route | str:
        """``_resolve``, remembered: the same decision for a request of the same class resolves the same way."""
        key = (id(d), req.accepts_async, bisect_left(self._sizes[req.model], req.payload_bytes))
        routes = self._routes[req.model]
        known = routes.get(key)
        if known is not None and known[0] is d:
            return known[1]
        if len(routes) >= ROUTE_CACHE_SIZE:
            routes.clear()
        route = routes[key] = (d, self._resolve(model, d, req))
        return route[1]

    def _resolve(self, model: ModelRoutes, d: Decision, req: RequestFeatures) -> Route | str:
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
        serves = self._backends[backend]
        if serves is not None and d.lane.value not in serves:
            return "backend_not_for_lane"  # e.g. a sagemaker-async backend named on a sync route
        hops = [Hop(d.lane, backend)] if self._usable(model, d.lane, req) else []
        seen: set[tuple[Lane, str]] = {(d.lane, backend)}
        for lane in d.fallback:
            fb = model.lanes.get(lane)
            if fb is not None and (lane, fb) not in seen and self._usable(model, lane, req):
                seen.add((lane, fb))
                hops.append(Hop(lane, fb))
        if not hops:
            return "async_not_accepted" if d.lane in JOB_LANES and model.limits.get(d.lane, 0) >= req.payload_bytes \
                else "too_large"
        return Route(d, tuple(hops))

    @classmethod
    def _any_lane_that_fits(cls, model: ModelRoutes, req: RequestFeatures) -> Route:
        hops = tuple(Hop(lane, b) for lane, b in model.lanes.items() if cls._usable(model, lane, req))
        lane = hops[0].lane if hops else model.default.lane
        return Route(Decision(lane, reason="too_large_for_default", policy="default"), hops)
