"""``shed``: reject requests below an urgency level while every target lane is saturated."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import Field

from router.config import Duration
from router.policy.params import SYNC_LANE_NAMES, Params, Reason, SyncLaneName, lanes, level
from router.types import Decision, Lane, RequestFeatures, Snapshot


class ShedParams(Params):
    below_urgency: str = "normal"  # levels strictly below this one are shed
    when_saturation_at_least: float = Field(1.0, ge=0.0, le=1.0)
    lanes: list[SyncLaneName] = Field(default_factory=lambda: list(SYNC_LANE_NAMES), min_length=1)
    retry_after: Duration = 1.0
    reason: Reason = "shed_saturated"


class ShedPolicy:
    """Sheds low-urgency traffic (429 + Retry-After) when none of ``lanes`` has room left for it.

    Lanes the model does not have are ignored; with none of them present the policy abstains.
    """

    Params = ShedParams

    def __init__(self, name: str, params: ShedParams, levels: Mapping[str, int]) -> None:
        self.name = name
        self._below = level(levels, params.below_urgency, ("below_urgency",))
        self._at_least = params.when_saturation_at_least
        self._lanes = lanes(params.lanes)
        self._decision = Decision(
            Lane.SHED, reason=params.reason, policy=name, retry_after_s=params.retry_after
        )

    def decide(self, req: RequestFeatures, snap: Snapshot) -> Decision | None:
        if req.priority >= self._below:
            return None
        seen = False
        for lane in self._lanes:
            state = snap.lane(lane)
            if state is None:
                continue
            if state.saturation < self._at_least:
                return None
            seen = True
        return self._decision if seen else None
