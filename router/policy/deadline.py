"""``deadline``: keep a request off lanes whose expected latency would miss the client's deadline."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from router.config import Duration
from router.policy.params import SYNC_LANE_NAMES, Params, SyncLaneName, lanes
from router.types import BreakerState, Decision, Lane, RequestFeatures, Snapshot

_OPEN = BreakerState.OPEN  # enum reads cost ~0.1 µs each in Python 3.11


class DeadlineParams(Params):
    lanes: list[SyncLaneName] = Field(default_factory=lambda: list(SYNC_LANE_NAMES), min_length=1)
    margin: float = Field(1.0, ge=1.0, le=10.0)  # expected latency is multiplied by this before comparing
    on_miss: str = Field("shed", pattern="^(shed|abstain)$")  # when no lane can make it
    retry_after: Duration = 1.0


class DeadlinePolicy:
    """With ``X-Deadline-Ms``, routes to the first lane (in ``lanes`` order) expected to answer in time.

    Expected latency is the backend's latency EWMA, plus its cold start when cold, plus the request's
    predicted wait in the backend's admission queue (by its urgency) when the backend is full.
    Abstains without a deadline, or when every lane fits (then later policies choose freely). When
    none fits it sheds (503 + Retry-After) so the client can fail fast, or abstains with
    ``on_miss: abstain``; a client that allowed a 202 then gets a job instead (the engine defers it).
    """

    Params = DeadlineParams

    def __init__(self, name: str, params: DeadlineParams, levels: Mapping[str, int]) -> None:
        self.name = name
        self._lanes = lanes(params.lanes)
        self._margin = params.margin
        self._shed = params.on_miss == "shed"
        self._miss = Decision(Lane.SHED, reason="deadline_unmeetable", policy=name,
                              retry_after_s=params.retry_after, status=503)
        self._fits: dict[tuple[Lane, ...], Decision] = {}  # one decision per set of lanes that fit, made once

    def _fit(self, fits: tuple[Lane, ...]) -> Decision:
        decision = self._fits.get(fits)
        if decision is None:
            decision = self._fits[fits] = Decision(fits[0], reason="deadline", fallback=fits[1:], policy=self.name)
        return decision

    def decide(self, req: RequestFeatures, snap: Snapshot) -> Decision | None:
        if req.deadline_ms is None:
            return None
        budget_s = req.deadline_ms / 1000.0
        present = 0
        fits: list[Lane] = []
        for lane in self._lanes:
            state = snap.lane(lane)
            if state is None:
                continue
            present += 1
            if state.breaker is not _OPEN and state.latency_for(req.priority) * self._margin <= budget_s:
                fits.append(lane)
        if present == 0 or len(fits) == present:
            return None
        if fits:
            return self._fit(tuple(fits))
        return self._miss if self._shed else None
