"""Service times learned from a recorded trace: per backend, the durations of its answered sync calls."""

from __future__ import annotations

from collections.abc import Iterable

from router.sim.backends import EmpiricalServiceTime, ServiceTime
from router.sim.stats import LatencyHistogram
from router.sim.trace import TraceRequest

SYNC_LANES = ("realtime", "serverless")
MIN_SAMPLES = 5


def fit_service_times(requests: Iterable[TraceRequest]) -> dict[str, ServiceTime]:
    """Per backend, the distribution of its answered sync calls' durations (the time the router saw, less any
    queue wait), without the calls that waited for a cold start (the backend models add their own) and the slowest
    1% of the rest (stalls)."""
    hists: dict[str, LatencyHistogram] = {}
    for r in requests:
        if r.status != 200 or r.lane not in SYNC_LANES or r.backend is None or r.duration_s is None or r.cold_start:
            continue
        h = hists.get(r.backend)
        if h is None:
            h = hists[r.backend] = LatencyHistogram()
        h.add(max(1e-5, r.duration_s - (r.queue_wait_s or 0.0)))
    out: dict[str, ServiceTime] = {}
    for backend, h in hists.items():
        if h.count >= MIN_SAMPLES:
            points = list(h.buckets())
            out[backend] = EmpiricalServiceTime([v for v, _ in points], [n for _, n in points])
    return out
