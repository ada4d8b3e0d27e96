"""What the status page (``GET /ui``) shows, as JSON for its script: backends live, recent decisions, the lane
split and shed/deferred counts of the last minutes, jobs by status.

The data plane appends one tuple per request to a bounded ring (``RecentDecisions``), nothing more; the history
is sampled from the Prometheus counters every few seconds by a task of its own, so the page costs the hot path
one ``deque.append``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from router.types import BreakerState, Lane

if TYPE_CHECKING:
    from router.metrics import RouterMetrics
    from router.runtime import Runtime

RECENT_DECISIONS = 2048  # per process: a few seconds at full load, minutes on a demo
HISTORY_INTERVAL_S = 10.0
HISTORY_SAMPLES = 91  # 15 minutes of 10 s steps, and the sample before them


class DecisionRecord(NamedTuple):
    """One answered request, as the ring keeps it."""

    at: float  # unix time
    request_id: str
    model: str
    lane: str
    backend: str
    reason: str
    policy: str
    status: int
    duration_s: float
    urgency: str | None
    caller: str | None
    payload_bytes: int | None


def new_recent_decisions(size: int = RECENT_DECISIONS) -> deque[tuple[Any, ...]]:
    """The ring the data plane appends a plain tuple to per request (DecisionRecord's fields: building the
    NamedTuple itself would cost the hot path a Python call)."""
    return deque(maxlen=size)


def decisions_json(recent: Iterable[tuple[Any, ...]], *, request_id: str | None = None, model: str | None = None,
                   limit: int = 100) -> list[dict[str, Any]]:
    """Newest first; ``request_id`` matches a prefix (ids are long), ``model`` exactly."""
    out = []
    for raw in reversed(list(recent)):
        record = DecisionRecord._make(raw)
        if request_id and not record.request_id.startswith(request_id):
            continue
        if model and record.model != model:
            continue
        out.append({**record._asdict(), "duration_ms": round(record.duration_s * 1000.0, 3)})
        if len(out) >= limit:
            break
    return out


class CounterSample(NamedTuple):
    at: float
    decisions: dict[tuple[str, str], float]  # (model, lane) -> decisions so far
    shed: dict[str, float]  # model -> sheds so far
    deferred: dict[str, float]  # model -> deferrals so far
    answers: dict[tuple[str, str], float]  # (model, status class "2xx"...) -> answers so far


def _totals(metric: Any, keys: Iterable[str]) -> dict[tuple[str, ...], float]:
    """A counter's values summed over the labels not in ``keys``."""
    out: dict[tuple[str, ...], float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = tuple(sample.labels[k] for k in keys)
                out[key] = out.get(key, 0.0) + sample.value
    return out


def sample_counters(metrics: RouterMetrics, now: float) -> CounterSample:
    decisions = {(m, lane): v for (m, lane), v in _totals(metrics.decisions.metric, ("model", "lane")).items()}
    shed = {m: v for (m,), v in _totals(metrics.shed.metric, ("model",)).items()}
    deferred = {m: v for (m,), v in _totals(metrics.deferred.metric, ("model",)).items()}
    answers: dict[tuple[str, str], float] = {}
    for (m, code), v in _totals(metrics.requests.metric, ("model", "code")).items():
        key = (m, f"{code[:1]}xx")
        answers[key] = answers.get(key, 0.0) + v
    return CounterSample(now, decisions, shed, deferred, answers)


class StatusHistory:
    """Counter samples every ``interval_s``, the last ``size`` kept; read as per-step differences."""

    def __init__(self, metrics: RouterMetrics, interval_s: float = HISTORY_INTERVAL_S,
                 size: int = HISTORY_SAMPLES) -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self.samples: deque[CounterSample] = deque(maxlen=size)
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        self.samples.append(sample_counters(self.metrics, time.time()))

    def start(self) -> None:
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="status-history")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.sample()

    def steps(self) -> list[dict[str, Any]]:
        """Per step: its end time and what happened in it, per model. The last step runs to now."""
        points = [*self.samples, sample_counters(self.metrics, time.time())]
        out = []
        for before, after in itertools.pairwise(points):
            models: dict[str, dict[str, Any]] = {}
            for (model, lane), value in after.decisions.items():
                if n := value - before.decisions.get((model, lane), 0.0):
                    _step(models, model)["lanes"][lane] = int(n)
            for model, value in after.shed.items():
                if n := value - before.shed.get(model, 0.0):
                    _step(models, model)["shed"] = int(n)
            for model, value in after.deferred.items():
                if n := value - before.deferred.get(model, 0.0):
                    _step(models, model)["deferred"] = int(n)
            for (model, cls), value in after.answers.items():
                if n := value - before.answers.get((model, cls), 0.0):
                    _step(models, model)["answers"][cls] = int(n)
            out.append({"start": before.at, "end": after.at, "models": models})
        return out


def _step(models: dict[str, dict[str, Any]], model: str) -> dict[str, Any]:
    return models.setdefault(model, {"lanes": {}, "shed": 0, "deferred": 0, "answers": {}})


def backends_json(runtime: Runtime) -> list[dict[str, Any]]:
    """Every backend as the router sees it now: slots, saturation, breaker, cold/warm, its queue."""
    tracker = runtime.tracker
    now = tracker.clock()
    cfg = runtime.routing.config
    checks = runtime.backend_checks.results
    out = []
    for name, backend in cfg.backends.items():
        t = tracker.trackers.get(name)
        if t is None:
            continue
        s = t.state(now)
        check = checks.get(name)
        out.append({
            "name": name, "kind": backend.kind, "inflight": s.inflight, "limit": s.capacity,
            "max_limit": s.max_capacity, "saturation": round(s.saturation, 4), "breaker": s.breaker.value,
            "serverless": s.serverless, "cold": s.cold, "cold_start_s": round(s.cold_start_s, 3),
            "latency_ms": round(s.latency_s * 1000.0, 3), "error_rate": round(s.error_rate, 4),
            "queue_depth": s.queue_depth, "expected_wait_ms": round(s.expected_wait_s * 1000.0, 3),
            "usable": check.usable if check is not None else None,
            "problem": check.detail if check is not None and not check.usable else None,
            "open": s.breaker is BreakerState.OPEN,
        })
    return out


def models_json(runtime: Runtime) -> list[dict[str, Any]]:
    out = []
    for name, entry in runtime.routing.models.items():
        out.append({"name": name, "policy": [p.name for p in entry.routes.chain],
                    "lanes": [{"lane": lane.value, "backend": backend, "limit": entry.routes.limits.get(lane)}
                              for lane, backend in entry.routes.lanes.items()]})
    return out


def job_counts(runtime: Runtime) -> dict[str, dict[str, int]]:
    """Jobs by lane and status (the numbers of ``router_jobs``)."""
    stats = runtime._job_stats()
    out: dict[str, dict[str, int]] = {}
    for (lane, status), n in sorted((stats.jobs if stats else {}).items()):
        if lane in (Lane.ASYNC.value, Lane.BATCH.value):
            out.setdefault(lane, {})[status] = int(n)
    return out


def tenants(runtime: Runtime) -> list[str]:
    from router.features import ANONYMOUS

    return sorted({c.tenant for c in runtime.routing.config.callers} | {ANONYMOUS})


def status_json(runtime: Runtime, history: StatusHistory, readiness: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "version": runtime.version, "config_hash": runtime.config_hash, "now": time.time(),
        "readiness": readiness, "models": models_json(runtime), "backends": backends_json(runtime),
        "history": {"interval_s": history.interval_s, "steps": history.steps()},
        "jobs": job_counts(runtime),
    }
    shadow = getattr(runtime, "shadow_status", None)  # shadow policies, where this router has them
    if callable(shadow):
        out["shadow"] = shadow()
    return out
