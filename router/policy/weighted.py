"""``weighted``: split traffic across lanes or backends by weight, e.g. a canary taking 5%.

The split is deterministic, not random: each request's side is read from a hash of its key (the request
id, ``by: request``) or of its caller's tenant (``by: caller``, so a tenant stays on one side). The policy
stays pure: the same request always goes the same way, and a simulation repeats.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from itertools import accumulate
from typing import Literal

from pydantic import Field

from router.policy.params import LaneName, Params, Reason
from router.types import Decision, Lane, RequestFeatures, Snapshot

_GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads consecutive keys evenly over [0, 1)
_MASK = (1 << 64) - 1


class Share(Params):
    lane: LaneName
    weight: float = Field(gt=0.0)
    backend: str | None = None  # a backend by name instead of the model's backend for the lane
    fallback: list[LaneName] = Field(default_factory=list)
    reason: Reason | None = None  # default: weighted_<index>


class WeightedParams(Params):
    split: list[Share] = Field(min_length=1)
    by: Literal["request", "caller"] = "request"


def unit(key: int) -> float:
    """``key`` mapped evenly onto [0, 1)."""
    return ((key * _GOLDEN) & _MASK) / float(1 << 64)


class WeightedPolicy:
    """Each request to one of ``split``'s shares, in proportion to their weights; never abstains."""

    Params = WeightedParams

    def __init__(self, name: str, params: WeightedParams, levels: Mapping[str, int]) -> None:
        self.name = name
        total = sum(s.weight for s in params.split)
        self._bounds = [w / total for w in accumulate(s.weight for s in params.split)]
        self._decisions = [Decision(Lane(s.lane), reason=s.reason or f"weighted_{i}", backend=s.backend,
                                    fallback=tuple(Lane(f) for f in s.fallback), policy=name)
                           for i, s in enumerate(params.split)]
        self._by_caller = params.by == "caller"
        self._callers: dict[str, float] = {}

    def decide(self, req: RequestFeatures, snap: Snapshot) -> Decision | None:
        if self._by_caller:
            x = self._callers.get(req.caller)
            if x is None:
                x = self._callers[req.caller] = unit(zlib.crc32(req.caller.encode()))
        else:
            x = unit(req.key)
        for bound, decision in zip(self._bounds, self._decisions, strict=True):
            if x < bound:
                return decision
        return self._decisions[-1]
