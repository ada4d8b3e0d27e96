"""What one simulated config did: the numbers ``simulate`` prints side by side and the report draws."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router.cost import DAY
from router.sim.stats import LatencyHistogram, TimeSeries

# Where a request ended up: its lane, or why it got none.
OUTCOMES = ("realtime", "serverless", "async", "batch", "shed", "failed", "rejected")
SYNC = ("realtime", "serverless")
JOBS = ("async", "batch")
SERIES_SUMS = (*OUTCOMES, "cost")
SERIES_MAXES = ("queue_depth", "jobs_queued", "batch_buffered")


@dataclass
class BackendUse:
    """One backend over the run."""

    name: str
    kind: str  # instances | serverless | async | batch-transform
    calls: int = 0
    cold_starts: int = 0
    refused: int = 0
    utilisation: float = 0.0  # busy slot-seconds / available slot-seconds
    cost: float = 0.0
    peak_instances: int | None = None


@dataclass
class Result:
    """One config's simulation."""

    name: str
    requests: int = 0
    span_s: float = 0.0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    latency: dict[str, LatencyHistogram] = field(default_factory=lambda: {k: LatencyHistogram() for k in OUTCOMES})
    deferred: int = 0  # became jobs because the sync lanes had no room (shed or full), not by their route
    fallbacks: int = 0  # moves along a fallback chain
    with_deadline: int = 0
    deadline_misses: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # why requests were shed or failed
    backends: dict[str, BackendUse] = field(default_factory=dict)
    cost: float = 0.0
    series: TimeSeries = field(default_factory=lambda: TimeSeries(SERIES_SUMS, SERIES_MAXES))
    trace_skipped: int = 0
    trace_late: int = 0

    def sync_latency(self) -> LatencyHistogram:
        """Every answered sync request's latency, both lanes together."""
        out = LatencyHistogram()
        for lane in SYNC:
            out.merge(self.latency[lane])
        return out

    @property
    def shed_and_deferred(self) -> int:
        return self.outcomes["shed"] + self.deferred

    @property
    def rejected_share(self) -> float:
        """Requests that got no answer (shed, failed, rejected) over all."""
        bad = self.outcomes["shed"] + self.outcomes["failed"] + self.outcomes["rejected"]
        return bad / self.requests if self.requests else 0.0

    @property
    def deadline_miss_share(self) -> float:
        return self.deadline_misses / self.with_deadline if self.with_deadline else 0.0

    @property
    def cost_per_1000(self) -> float:
        return self.cost / self.requests * 1000.0 if self.requests else 0.0

    @property
    def cost_per_day(self) -> float:
        return self.cost / self.span_s * DAY if self.span_s > 0 else 0.0

    def split(self) -> dict[str, float]:
        """Share of requests per outcome."""
        n = self.requests or 1
        return {k: v / n for k, v in self.outcomes.items()}

    def to_json(self) -> dict[str, Any]:
        def pct(h: LatencyHistogram) -> dict[str, float | None]:
            return {f"p{p}": None if (v := h.percentile(p)) is None else round(v * 1000.0, 3) for p in (50, 95, 99)}

        return {
            "config": self.name,
            "requests": self.requests,
            "span_s": round(self.span_s, 3),
            "outcomes": self.outcomes,
            "split": {k: round(v, 4) for k, v in self.split().items()},
            "latency_ms": {k: {"count": self.latency[k].count, **pct(self.latency[k])}
                           for k in (*SYNC, *JOBS)},
            "sync_latency_ms": pct(self.sync_latency()),
            "deferred": self.deferred,
            "shed": self.outcomes["shed"],
            "fallbacks": self.fallbacks,
            "with_deadline": self.with_deadline,
            "deadline_misses": self.deadline_misses,
            "reasons": dict(sorted(self.reasons.items())),
            "backends": {b.name: {"kind": b.kind, "calls": b.calls, "cold_starts": b.cold_starts,
                                  "refused": b.refused, "utilisation": round(b.utilisation, 4),
                                  "cost": round(b.cost, 6), "peak_instances": b.peak_instances}
                         for b in self.backends.values()},
            "cost": {"total": round(self.cost, 6), "per_1000_requests": round(self.cost_per_1000, 6),
                     "per_day": round(self.cost_per_day, 4)},
            "trace": {"skipped_lines": self.trace_skipped, "replayed_late": self.trace_late},
        }
