"""Prometheus metrics. Label values come from the config or small fixed sets, never from raw requests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from router.state import SaturationTracker
from router.storage.base import StoreStats
from router.types import BreakerState

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created doubles the series count and no dashboard reads it

UNKNOWN_MODEL = "_unknown"  # the model label of requests for models the config does not have
QUEUE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _Children:
    """Caches labelled children: ``labels()`` takes a lock and builds a tuple on every call."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    @property
    def metric(self) -> Any:
        """The labelled metric itself (for reading its samples)."""
        return self._metric

    def __call__(self, *labels: str) -> Any:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*labels)
        return child


class BackendCollector(Collector):
    """Reads backend gauges from the trackers at scrape time, so the hot path sets no gauges."""

    def __init__(self, tracker: Callable[[], SaturationTracker]) -> None:
        self._tracker = tracker

    def collect(self) -> Iterable[GaugeMetricFamily]:
        tracker = self._tracker()
        now = tracker.clock()
        families = {
            "inflight": GaugeMetricFamily("router_backend_inflight", "Calls in flight per backend", labels=["backend"]),
            "saturation": GaugeMetricFamily("router_backend_saturation",
                                            "In-flight / current capacity, 1 when the breaker is open",
                                            labels=["backend"]),
            "capacity": GaugeMetricFamily("router_backend_capacity",
                                          "Current concurrency limit: learned (max_concurrency: auto) or "
                                          "the configured one, lowered on throttling",
                                          labels=["backend"]),
            "latency": GaugeMetricFamily("router_backend_latency_ewma_seconds",
                                         "EWMA of successful call latency", labels=["backend"]),
            "errors": GaugeMetricFamily("router_backend_error_ratio", "EWMA of failed calls, 0..1",
                                        labels=["backend"]),
            "breaker": GaugeMetricFamily("router_backend_breaker_open",
                                         "1 while the circuit breaker is open", labels=["backend"]),
            "cold": GaugeMetricFamily("router_backend_cold",
                                      "1 while a serverless backend is idle past its window", labels=["backend"]),
            "cold_start": GaugeMetricFamily("router_backend_cold_start_seconds",
                                            "Expected extra latency of a cold call", labels=["backend"]),
        }
        for name, t in tracker.trackers.items():
            s = t.state(now)
            families["inflight"].add_metric([name], s.inflight)
            families["saturation"].add_metric([name], s.saturation)
            families["capacity"].add_metric([name], s.capacity)
            families["latency"].add_metric([name], s.latency_s)
            families["errors"].add_metric([name], s.error_rate)
            families["breaker"].add_metric([name], 1.0 if s.breaker is BreakerState.OPEN else 0.0)
            families["cold"].add_metric([name], 1.0 if s.cold else 0.0)
            families["cold_start"].add_metric([name], s.cold_start_s)
        yield from families.values()


class CostCollector(Collector):
    """What backends cost per hour whatever the traffic (always-on instances, provisioned concurrency)."""

    def __init__(self, fixed: Callable[[], Iterable[tuple[str, float]]]) -> None:
        self._fixed = fixed

    def collect(self) -> Iterable[GaugeMetricFamily]:
        g = GaugeMetricFamily("router_backend_fixed_cost_per_hour_dollars",
                              "What a backend costs per hour whatever the traffic (from its cost block); the same "
                              "on every replica: take max, not sum", labels=["backend"])
        for backend, per_hour in self._fixed():
            g.add_metric([backend], per_hour)
        yield g


class JobCollector(Collector):
    """Job gauges from the job lane's last stats (refreshed by its janitor), read at scrape time."""

    def __init__(self, stats: Callable[[], StoreStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[GaugeMetricFamily]:
        stats = self._stats()
        if stats is None:
            return
        jobs = GaugeMetricFamily("router_jobs", "Jobs by lane and status", labels=["lane", "status"])
        for (lane, status), count in sorted(stats.jobs.items()):
            jobs.add_metric([lane, status], count)
        queued = GaugeMetricFamily("router_jobs_queued", "Jobs waiting to run, per model (\"*\": a whole SQS queue)",
                                   labels=["model"])
        oldest = GaugeMetricFamily("router_jobs_oldest_queued_age_seconds", "Age of the oldest queued job",
                                   labels=["model"])
        for model, count in sorted(stats.queued.items()):
            queued.add_metric([model], count)
        for model, age in sorted(stats.oldest_queued_age_s.items()):
            oldest.add_metric([model], age)
        dead = GaugeMetricFamily("router_jobs_dead_lettered",
                                 "Jobs that failed after using up their attempts (on SQS: the DLQ's depth)")
        dead.add_metric([], stats.dead_lettered)
        yield from (jobs, queued, oldest, dead)


class StorageCollector(Collector):
    """How long each job lane's storage has been failing (0 while it works), read at scrape time."""

    def __init__(self, failing: Callable[[], Iterable[tuple[str, float]]]) -> None:
        self._failing = failing

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("router_storage_failing_seconds",
                                  "Seconds a job lane's storage has kept failing, 0 while it works", labels=["lane"])
        for lane, seconds in self._failing():
            gauge.add_metric([lane], seconds)
        yield gauge


class BatchGauge(NamedTuple):
    model: str
    records: int
    oldest_age_s: float
    max_wait_s: float


class BatchCollector(Collector):
    """The batch buffers' gauges, read at scrape time from the batch lane's in-memory counters."""

    def __init__(self, buffers: Callable[[], Iterable[BatchGauge]]) -> None:
        self._buffers = buffers

    def collect(self) -> Iterable[GaugeMetricFamily]:
        buffered = GaugeMetricFamily("router_batch_buffered_records", "Records buffered, not yet flushed",
                                     labels=["model"])
        oldest = GaugeMetricFamily("router_batch_oldest_buffered_age_seconds",
                                   "Age of the oldest buffered record (0 when none)", labels=["model"])
        max_wait = GaugeMetricFamily("router_batch_max_wait_seconds", "The configured max_wait of the buffer",
                                     labels=["model"])
        for gauge in self._buffers():
            buffered.add_metric([gauge.model], gauge.records)
            oldest.add_metric([gauge.model], gauge.oldest_age_s)
            max_wait.add_metric([gauge.model], gauge.max_wait_s)
        yield from (buffered, oldest, max_wait)


class ConfigInfo(NamedTuple):
    """What the config gauges show: the config in force and how it got there."""

    version: str  # the router's
    config_hash: str  # of the config in force
    last_reload_ok: bool  # False from a rejected reload until a good one
    loaded_at: float  # unix time the config in force was loaded (start or reload)
    file_applied: bool | None  # the file on disk is the config in force; None without a config file


class ConfigCollector(Collector):
    """The build and config gauges, read at scrape time."""

    def __init__(self, info: Callable[[], ConfigInfo]) -> None:
        self._info = info

    def collect(self) -> Iterable[GaugeMetricFamily]:
        info = self._info()
        build = GaugeMetricFamily("router_build_info", "The router's version and the hash of the config in force",
                                  labels=["version", "config_hash"])
        build.add_metric([info.version, info.config_hash], 1)
        ok = GaugeMetricFamily("router_config_last_reload_successful",
                               "0 from a rejected reload until a good one, else 1")
        ok.add_metric([], 1 if info.last_reload_ok else 0)
        loaded = GaugeMetricFamily("router_config_last_reload_success_timestamp_seconds",
                                   "When the config in force was loaded (start or reload)")
        loaded.add_metric([], info.loaded_at)
        yield from (build, ok, loaded)
        if info.file_applied is not None:
            applied = GaugeMetricFamily("router_config_file_applied",
                                        "1 while the config file on disk is the config in force, else 0")
            applied.add_metric([], 1 if info.file_applied else 0)
            yield applied


class UsableCollector(Collector):
    """``router_backend_usable``: the readiness checks' verdict per backend, read at scrape time."""

    def __init__(self, usable: Callable[[], Mapping[str, bool]]) -> None:
        self._usable = usable

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("router_backend_usable",
                                   "0 while the readiness check says the backend cannot work at all (no credentials, "
                                   "unknown endpoint, connection refused), else 1", labels=["backend"])
        for name, usable in sorted(self._usable().items()):
            family.add_metric([name], 1 if usable else 0)
        yield family


class QueueCollector(Collector):
    """Admission queue depths per backend and urgency level, read at scrape time (zeros included)."""

    def __init__(self, depths: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self._depths = depths

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily("router_queue_depth", "Requests waiting for a backend slot, by urgency",
                                  labels=["backend", "urgency"])
        for backend, urgency, waiting in self._depths():
            depth.add_metric([backend, urgency], waiting)
        yield depth


class RouterMetrics:
    """Every metric the router exports, in its own registry (several apps can live in one process), with the
    standard ``process_*`` and ``python_*`` metrics of the process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.requests = _Children(Counter("router_requests", "Data-plane requests answered",
                                          ["model", "lane", "backend", "code"], registry=r))
        self.duration = _Children(Histogram("router_request_duration_seconds", "Time to answer, by lane",
                                            ["model", "lane"], buckets=LATENCY_BUCKETS, registry=r))
        self.first_byte = _Children(Histogram(
            "router_time_to_first_byte_seconds", "From a request's arrival to the first byte of its answer's body "
            "(the first event of a streamed answer)", ["model", "lane"], buckets=LATENCY_BUCKETS, registry=r))
        self.control_requests = _Children(Counter(
            "router_control_requests", "Control requests (health, readiness, metadata) forwarded on extra paths",
            ["model", "code"], registry=r))
        self.decisions = _Children(Counter("router_decisions", "Routing decisions",
                                           ["model", "lane", "reason"], registry=r))
        self.fallbacks = _Children(Counter("router_fallbacks", "Moves along a fallback chain",
                                           ["model", "from_backend", "to_backend", "reason"], registry=r))
        self.shed = _Children(Counter("router_shed", "Requests rejected to shed load", ["model", "reason"],
                                      registry=r))
        self.policy_skips = _Children(Counter("router_policy_skips", "Policy decisions skipped by the engine",
                                              ["model", "policy", "reason"], registry=r))
        self.urgency_clamped = _Children(Counter("router_urgency_clamped",
                                                 "Requests whose urgency was lowered to the caller's maximum",
                                                 ["model"], registry=r))
        self.backend_calls = _Children(Counter("router_backend_calls", "Calls to backends by outcome",
                                               ["backend", "outcome"], registry=r))
        self.cold_calls = _Children(Counter("router_backend_cold_calls",
                                            "Calls that reached a cold serverless backend", ["backend"],
                                            registry=r))
        self.reloads = _Children(Counter("router_config_reloads", "Config reloads by result", ["result"],
                                         registry=r))
        self.http_rejected = _Children(Counter(
            "router_http_rejected", "Connections closed by a limit before a request reached the router",
            ["reason"], registry=r))
        for result in ("ok", "invalid", "failed"):  # from 0, so increase() sees the first of each
            self.reloads(result)
        self.retry_budget_exhausted = _Children(Counter(
            "router_retry_budget_exhausted", "Fallbacks not tried because the retry budget was spent",
            ["model"], registry=r))

        self.queue_wait = _Children(Histogram(
            "router_queue_wait_seconds", "Time requests waited in a backend's admission queue, whatever the outcome",
            ["backend"], buckets=QUEUE_BUCKETS, registry=r))
        self.queue_rejections = _Children(Counter(
            "router_queue_rejected", "Requests a backend's admission queue did not serve, by reason",
            ["backend", "reason"], registry=r))
        self.estimated_cost = _Children(Counter(
            "router_estimated_cost_dollars", "Estimated cost of the calls made: serverless GB-seconds, a call's "
            "share of an instance's time, Batch Transform jobs (backends with a cost block)",
            ["model", "lane", "backend"], registry=r))
        self.shadow_decisions = _Children(Counter(
            "router_shadow_decisions", "Decisions of the model's shadow chain beside the live one (not dispatched)",
            ["model", "live_lane", "shadow_lane"], registry=r))
        self.shadow_cost = _Children(Counter(
            "router_shadow_estimated_cost_dollars", "Estimated cost of the live and the shadow chain's decisions",
            ["model", "chain"], registry=r))
        self.deferred = _Children(Counter(
            "router_deferred", "Requests that became jobs instead of being rejected for capacity or shed",
            ["model", "lane", "reason"], registry=r))

        self.job_duration = _Children(Histogram(
            "router_job_duration_seconds", "From acceptance to a terminal state", ["model", "lane", "status"],
            buckets=(0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 21600), registry=r))
        self.job_attempts = _Children(Counter("router_job_attempts", "Job attempts by outcome",
                                              ["model", "outcome"], registry=r))
        self.job_worker_restarts = Counter(
            "router_job_worker_restarts", "Job workers that ended unexpectedly and were started again", registry=r)
        self.storage_errors = _Children(Counter(
            "router_storage_errors", "Storage operations of the job lanes that failed (each retry counts)",
            ["lane", "store"], registry=r))

        self.batch_flushes = _Children(Counter("router_batch_flushes", "Batch buffer flushes by trigger",
                                               ["model", "trigger"], registry=r))
        self.batch_size = _Children(Histogram(
            "router_batch_size_records", "Records per flushed batch", ["model"],
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000), registry=r))
        self.batch_run_duration = _Children(Histogram(
            "router_batch_run_duration_seconds", "Time to run one flushed batch", ["model"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600, 86400), registry=r))
        self.batch_records = _Children(Counter("router_batch_records", "Batch records run, by outcome",
                                               ["model", "outcome"], registry=r))

    def shadow_decision(self, model: str, live_lane: str, shadow_lane: str, live_cost: float,
                        shadow_cost: float) -> None:
        self.shadow_decisions(model, live_lane, shadow_lane).inc()
        self.shadow_cost(model, "live").inc(live_cost)
        self.shadow_cost(model, "shadow").inc(shadow_cost)

    def watch_costs(self, fixed: Callable[[], Iterable[tuple[str, float]]]) -> None:
        self.registry.register(CostCollector(fixed))

    def queue_waited(self, backend: str, seconds: float) -> None:
        self.queue_wait(backend).observe(seconds)

    def queue_rejected(self, backend: str, reason: str) -> None:
        self.queue_rejections(backend, reason).inc()

    def watch_queues(self, depths: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        self.registry.register(QueueCollector(depths))

    def watch_batch(self, buffers: Callable[[], Iterable[BatchGauge]]) -> None:
        self.registry.register(BatchCollector(buffers))

    def watch_jobs(self, stats: Callable[[], StoreStats | None]) -> None:
        self.registry.register(JobCollector(stats))

    def watch_storage(self, failing: Callable[[], Iterable[tuple[str, float]]]) -> None:
        """``failing()`` gives (lane, seconds its storage has been failing) at scrape time."""
        self.registry.register(StorageCollector(failing))

    def watch_usable(self, usable: Callable[[], Mapping[str, bool]]) -> None:
        self.registry.register(UsableCollector(usable))

    def watch_config(self, info: Callable[[], ConfigInfo]) -> None:
        self.registry.register(ConfigCollector(info))

    def watch_backends(self, tracker: Callable[[], SaturationTracker]) -> None:
        self.registry.register(BackendCollector(tracker))
