"""``explain``: a request's decision as the router would make it now, or in a backend state the caller describes
(saturated, cold, breaker open, a queue), with every policy's verdict and the answer the client would get.

Nothing is called and nothing live is changed: the state is applied to a copy of the snapshot the policies see.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from router.config import Duration
from router.policy.engine import Verdict
from router.types import JOB_LANES, BackendState, BreakerState, Hop, Lane, RequestFeatures, Route, Snapshot


class StateOverride(BaseModel):
    """A backend's state for ``explain``, given by its lane (``realtime``) or its name."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    saturation: float | None = Field(None, ge=0.0, le=1.0)  # in-flight calls are set to match
    cold: bool | None = None
    breaker: BreakerState | None = None
    queue_depth: int | None = Field(None, ge=0, le=1_000_000)  # waiting requests, all ahead of this one
    latency: Duration | None = None  # the latency EWMA


def with_state(snap: Snapshot, state: Mapping[str, StateOverride]) -> Snapshot:
    """``snap`` with the described backends changed; ValueError naming a lane or backend the model does not have."""
    backends = dict(snap.backends)
    for target, change in state.items():
        lane = next((lane for lane in snap.lanes if lane.value == target), None)
        name = snap.lanes[lane] if lane is not None else target
        current = backends.get(name)
        if current is None:
            known = ", ".join([*(lane.value for lane in snap.lanes), *snap.backends])
            raise ValueError(f"{target!r} is neither a lane nor a backend of this model (known: {known})")
        backends[name] = _changed(current, change)
    return snap._replace(backends=backends)


def _changed(s: BackendState, change: StateOverride) -> BackendState:
    if change.saturation is not None:
        inflight = min(s.capacity, math.ceil(change.saturation * s.capacity))
        s = s._replace(saturation=change.saturation, inflight=inflight)
    if change.latency is not None:
        s = s._replace(latency_s=change.latency)
    if change.cold is not None:
        s = s._replace(cold=change.cold and s.serverless, inflight=0 if change.cold else s.inflight)
    if change.breaker is not None:
        s = s._replace(breaker=change.breaker, saturation=1.0 if change.breaker is BreakerState.OPEN else s.saturation)
    if change.queue_depth is not None:
        top = 1 << 30  # the waiters count as ahead of any request
        s = s._replace(queue_depth=change.queue_depth,
                       queue_levels=((top, change.queue_depth),) if change.queue_depth else (),
                       inflight=max(s.inflight, s.capacity) if change.queue_depth else s.inflight)
    return s


def verdict_json(v: Verdict) -> dict[str, Any]:
    out: dict[str, Any] = {"policy": v.policy, "verdict": v.outcome}
    if v.why is not None:
        out["why"] = v.why
    if v.decision is not None:
        d = v.decision
        out["decision"] = {"lane": d.lane.value, "fallback": [f.value for f in d.fallback], "reason": d.reason}
    return out


def not_consulted(chain: Sequence[str], verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    """The policies after the one that decided: never asked."""
    asked = {v.policy for v in verdicts}
    return [{"policy": name, "verdict": "not consulted"} for name in chain if name not in asked]


def expected_answer(route: Route, req: RequestFeatures, queue: Sequence[Mapping[str, Any]], *, max_bytes: int,
                    overflow_priority: int, deferral: Hop | None) -> dict[str, Any]:
    """The status the client would get, and why, from the route and the queue positions of its sync hops. A
    backend's own answer (a 424 ModelError, throttling) is not predicted."""
    d = route.decision
    if req.payload_bytes > max_bytes:
        return {"status": 413, "why": f"the body is above the model's largest lane limit ({max_bytes} bytes)"}
    if d.lane is Lane.SHED:
        return {"status": d.status, "why": f"shed by policy {d.policy!r} ({d.reason}), Retry-After "
                f"{d.retry_after_s:g} s" if d.retry_after_s is not None else f"shed by policy {d.policy!r}"}
    if not route.hops:
        return {"status": 413, "why": "no lane of the route takes a body this large"}
    first = route.hops[0]
    if first.lane in JOB_LANES:
        return {"status": 202, "why": f"a job on the {first.lane} lane ({first.backend})"}
    for hop in queue:
        if hop["room_now"]:
            return {"status": 200, "why": f"served by {hop['backend']} ({hop['lane']}), which has a free slot"}
    for hop in queue:
        if hop["would_wait"]:
            return {"status": 200, "why": f"served by {hop['backend']} ({hop['lane']}) after waiting about "
                    f"{hop['predicted_wait_s']:.3f} s for a slot"}
    job = next((h for h in route.hops if h.lane in JOB_LANES), None) or deferral
    if job is not None:
        return {"status": 202, "why": f"every sync backend is full and no wait fits: a job on the {job.lane} lane "
                f"({job.backend})"}
    if req.priority >= overflow_priority:
        return {"status": 200, "why": f"every backend is full: sent over {route.hops[0].backend}'s limit (this "
                "urgency is never refused for capacity alone)"}
    return {"status": 503, "why": "every sync backend is full and no wait fits the request's budget; Retry-After "
            "about the predicted wait"}
