"""Service times learned from a recorded trace: per backend, the durations of its answered sync calls."""

from __future__ import annotations

from collections.abc import Iterable

from router.sim.backends import ServiceTime
from router.sim.stats import LatencyHistogram
from router.sim.trace import TraceRequest

SYNC_LANES = ("realtime", "serverless")
MIN_SAMPLES = 5


def fit_service_times(requests: Iterable[TraceRequest]) -> dict[str, ServiceTime]:
    """A lognormal per backend from the median and upper quartile of its answered sync calls (the time the
    router saw, less any queue wait): robust to the few cold starts among them."""
    hists: dict[str, LatencyHistogram] = {}
    for r in requests:
        if r.status != 200 or r.lane not in SYNC_LANES or r.backend is None or r.duration_s is None:
            continue
        h = hists.get(r.backend)
        if h is None:
            h = hists[r.backend] = LatencyHistogram()
        h.add(max(1e-5, r.duration_s - (r.queue_wait_s or 0.0)))
    out = {}
    for backend, h in hists.items():
        p50, p75 = h.percentile(50), h.percentile(75)
        if h.count >= MIN_SAMPLES and p50 is not None and p75 is not None:
            out[backend] = ServiceTime.from_quartile(p50, p75)
    return out
