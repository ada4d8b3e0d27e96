"""What a running router holds: the routing table of the current config, and what outlives a reload."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import structlog

from router.backends import Connections, build_backend
from router.batch.base import BatchBuffer, BatchRunner
from router.batch.lane import BatchLane
from router.batch.local import LocalRunner
from router.batch.store import BatchStore
from router.config import (
    KIND_LANES,
    AdaptiveConcurrencyConfig,
    BackendConfig,
    BatchConfig,
    LocalStateConfig,
    RouterConfig,
    SageMakerBatchBackendConfig,
    load_config,
)
from router.config_state import ConfigFile, config_hash, router_version
from router.cost import BackendCost, costs
from router.explain import StateOverride, expected_answer, not_consulted, verdict_json, with_state
from router.features import ANONYMOUS, FeatureExtractor
from router.flow.admission import Admissions, QueueSettings
from router.flow.budget import RetryBudget
from router.flow.limits import GradientSettings
from router.lanes.jobs import JobLane
from router.lanes.sync import SyncLane, Target
from router.metrics import ConfigInfo, RouterMetrics
from router.notify import CallbackPolicy, WebhookNotifier
from router.paths import PathTable
from router.policy.engine import ModelRoutes, PolicyEngine, Verdict
from router.policy.registry import build_policy
from router.protocols import PathRule
from router.readiness import BackendChecks
from router.shadow import Shadows
from router.state import Clock, SaturationTracker, TrackerSettings
from router.status import new_recent_decisions
from router.storage import open_stores
from router.storage.base import ObjectStore, StoreStats
from router.storage.health import StorageHealth
from router.types import JOB_LANES, Backend, Decision, Lane, RequestFeatures, Route, Snapshot
from router.yamlpos import ConfigError

if TYPE_CHECKING:  # botocore is imported only when SNS notifications are configured
    from router.notify_sns import SnsJobNotifier

log = structlog.get_logger("router.runtime")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    routes: ModelRoutes
    max_bytes: int  # the largest payload any of its lanes takes, capped by server.max_body
    max_sync_bytes: int  # the largest a sync lane takes: the most the router ever holds in memory
    control_backend: str | None = None  # where control paths (health, metadata) go: the realtime, else serverless


@dataclass(frozen=True, slots=True)
class Routing:
    """Everything derived from one config version; replaced whole on reload, never mutated."""

    config: RouterConfig
    models: Mapping[str, ModelEntry]
    engine: PolicyEngine
    features: FeatureExtractor
    targets: Mapping[str, Target]
    paths: PathTable  # the models' extra paths
    overflow_priority: int
    callbacks: CallbackPolicy | None = None  # webhooks' allow-list, when webhooks are on
    # Request headers the router keeps to itself on forwarded paths (lower case)
    strip_headers: frozenset[str] = frozenset()
    weights: Mapping[str, float] = field(default_factory=dict)  # tenant -> fair-share weight in admission queues
    level_names: Mapping[int, str] = field(default_factory=dict)  # urgency priority -> level name
    costs: Mapping[str, BackendCost] = field(default_factory=dict)  # priced backends (their cost block)
    shadows: Shadows | None = None  # the models' shadow chains, when any model has one

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, 1.0)


def tracker_settings(cfg: BackendConfig) -> TrackerSettings:
    sls, brk, limit = cfg.serverless, cfg.breaker, cfg.max_concurrency
    adaptive = None
    if isinstance(limit, AdaptiveConcurrencyConfig):
        adaptive = GradientSettings(initial=limit.initial, min=limit.min, max=limit.max)
    return TrackerSettings(
        max_concurrency=limit if isinstance(limit, int) else limit.max,
        breaker_failures=brk.failures,
        breaker_open_s=brk.open_for,
        serverless=sls is not None,
        idle_after_s=sls.idle_after if sls else 0.0,
        cold_start_s=sls.cold_start if sls else 0.0,
        adaptive=adaptive,
        breaker_failure_rate=brk.failure_rate,
        breaker_min_requests=brk.min_requests,
        breaker_window_s=brk.window,
        breaker_probe_share=brk.probe_share,
    )


def queue_settings(cfg: BackendConfig) -> QueueSettings:
    return QueueSettings(cfg.queue.max_depth, cfg.queue.max_wait)


def build_routing(
    cfg: RouterConfig,
    tracker: SaturationTracker,
    backends: Mapping[str, Backend],
    metrics: RouterMetrics,
    admissions: Admissions | None = None,
) -> Routing:
    """The routing table for ``cfg``; trackers and admission queues for its backends are created or reconfigured."""
    levels = cfg.urgency.levels
    policies = {name: build_policy(name, p.type, p.params, levels) for name, p in cfg.policies.items()}
    admissions = admissions if admissions is not None else Admissions(metrics)
    targets = {}
    for name, bcfg in cfg.backends.items():
        t = tracker.track(name, tracker_settings(bcfg))
        a = admissions.track(name, t, queue_settings(bcfg))
        if name in backends:
            targets[name] = Target(backends[name], t, a)
    tracker.retain(cfg.backends)
    admissions.retain(cfg.backends)
    models: dict[str, ModelEntry] = {}
    rules: list[PathRule] = []
    for name, m in cfg.models.items():
        lanes = {Lane(k): v for k, v in m.lanes.items()}
        limits = {lane: m.limit(lane) for lane in lanes}
        default = m.default_route()
        routes = ModelRoutes(
            lanes=lanes,
            limits=limits,
            chain=tuple(policies[p] for p in m.policy),
            default=Decision(Lane(default.lane), reason="default", policy="default",
                             fallback=tuple(Lane(f) for f in default.fallback)),
            async_without_prefer=m.async_without_prefer,
        )
        metrics.retry_budget_exhausted(name)  # from 0, so increase() sees the first
        sync_limits = [v for lane, v in limits.items() if lane not in JOB_LANES]
        models[name] = ModelEntry(name, routes, min(cfg.server.max_body, max(limits.values(), default=0)),
                                  min(cfg.server.max_body, max(sync_limits, default=0)),
                                  lanes.get(Lane.REALTIME, lanes.get(Lane.SERVERLESS)))
        rules += m.path_rules(name)

    def on_skip(model: str, policy: str, why: str) -> None:
        metrics.policy_skips(model, policy, why).inc()

    serves = {name: KIND_LANES.get(b.kind) for name, b in cfg.backends.items()}
    engine = PolicyEngine({n: e.routes for n, e in models.items()}, serves, on_skip)
    priced = costs(cfg)
    shadowed = {n: replace(models[n].routes, chain=tuple(policies[p] for p in m.shadow))
                for n, m in cfg.models.items() if m.shadow}
    shadows = Shadows(PolicyEngine(shadowed, serves, on_skip), frozenset(shadowed), priced, metrics) \
        if shadowed else None
    features = FeatureExtractor(cfg.urgency, cfg.callers, cfg.server.api_key_header,
                                on_clamp=lambda model: metrics.urgency_clamped(model).inc())
    overflow = levels.get(cfg.fallback.overflow_min_urgency, max(levels.values()))
    callbacks = CallbackPolicy(cfg.webhooks.allow) if cfg.webhooks else None
    strip = {cfg.urgency.header, cfg.server.api_key_header, *cfg.proxy.strip_headers}
    if cfg.webhooks:
        strip.add(cfg.webhooks.header)
    weights = {c.tenant: c.weight for c in cfg.callers}
    weights.setdefault(ANONYMOUS, 1.0)
    names: dict[int, str] = {}
    for level, priority in sorted(levels.items(), key=lambda kv: kv[1]):
        names.setdefault(priority, level)
    return Routing(cfg, models, engine, features, targets, PathTable(rules), overflow, callbacks,
                   frozenset(h.lower() for h in strip), MappingProxyType(weights), MappingProxyType(names),
                   MappingProxyType(priced), shadows)


class Runtime:
    """The live router: current routing, backend trackers, shared connections, metrics and the sync lane."""

    def __init__(self, cfg: RouterConfig, *, config_path: str | Path | None = None,
                 metrics: RouterMetrics | None = None, clock: Clock = time.monotonic,
                 wall_clock: Clock = time.time) -> None:
        """``clock`` times calls, deadlines and waits; ``wall_clock`` stamps jobs (created, ended, TTL, retention)."""
        self.config_path = Path(config_path) if config_path else None
        self.clock = clock
        self.wall_clock = wall_clock
        self.metrics = metrics or RouterMetrics()
        self.tracker = SaturationTracker(clock)
        self.admissions = Admissions(self.metrics)
        self.metrics.watch_backends(lambda: self.tracker)
        self.metrics.watch_queues(lambda: self.admissions.depths(self.routing.level_names))
        self.metrics.watch_jobs(self._job_stats)
        self.metrics.watch_batch(lambda: self.batch_lane.gauges() if self.batch_lane else ())
        self.metrics.watch_storage(lambda: [(h.lane, h.failing_for()) for h in self.storage_health()])
        self.metrics.watch_config(self._config_info)
        self.config_file = ConfigFile(self.config_path) if self.config_path else None
        self.config_hash = config_hash(cfg)
        self.config_loaded_at = time.time()
        self.last_reload_ok = True
        self.version = router_version()
        self.connections = Connections()
        self.backend_checks = BackendChecks(self.connections)
        self.metrics.watch_usable(lambda: {n: r.usable for n, r in self.backend_checks.results.items()})
        self._backends: dict[str, tuple[BackendConfig, Backend]] = {}
        self.routing = build_routing(cfg, self.tracker, {}, self.metrics, self.admissions)
        retry = cfg.fallback
        self.sync = SyncLane(RetryBudget(retry.retry_budget, retry.min_retries_per_second, clock, retry.retry_burst),
                             self.metrics, self.routing.overflow_priority, clock)
        self.sync.costs = self.routing.costs
        self.metrics.watch_costs(lambda: ((n, c.fixed_per_hour) for n, c in self.routing.costs.items()))
        self.recent = new_recent_decisions()  # the last requests answered, for the status page
        self.started = False
        self.draining = False  # /readyz is 503 (SIGTERM's drain); requests are still served
        self.closing = False  # the lanes are stopping: no new work is taken
        self.job_lane: JobLane | None = None
        self.batch_lane: BatchLane | None = None

    async def start(self) -> None:
        self.routing = await self._routing_for(self.routing.config)
        cfg = self.routing.config
        await self.backend_checks.update(cfg.backends)  # /readyz tells the truth from the first answer
        self.backend_checks.start()
        if any(lane in JOB_LANES for m in self.routing.models.values() for lane in m.routes.lanes):
            objects, jobs = await open_stores(cfg.state)
            self.job_lane = JobLane(objects, jobs, cfg.jobs, self.sync, self._job_target, clock=self.wall_clock)
            self._set_notifier(cfg)
            await self.job_lane.start()
            if any(Lane.BATCH in m.routes.lanes for m in self.routing.models.values()):
                store = await self._batch_buffer(cfg, objects)
                self.batch_lane = BatchLane(store, objects, self._batch_settings, self._batch_runner, self.metrics,
                                            drain_timeout=cfg.jobs.drain_timeout, events=self.job_lane.events,
                                            retention=cfg.jobs.retention, clock=self.wall_clock)
                await self.batch_lane.start()
        self.started = True
        log.info("router_started", models=sorted(self.routing.models), backends=sorted(self._backends))

    async def _routing_for(self, cfg: RouterConfig) -> Routing:
        """Build the routing for ``cfg``, reusing backends whose config did not change."""
        backends: dict[str, tuple[BackendConfig, Backend]] = {}
        for name, bcfg in cfg.backends.items():
            if isinstance(bcfg, SageMakerBatchBackendConfig):
                continue  # not called per request: the batch lane runs its batches through _batch_runner
            old = self._backends.get(name)
            if old is not None and old[0] == bcfg:
                backends[name] = old
                continue
            backend = build_backend(name, bcfg, self.connections)
            await backend.start()
            backends[name] = (bcfg, backend)
        routing = build_routing(cfg, self.tracker, {n: b for n, (_, b) in backends.items()}, self.metrics,
                                self.admissions)
        retired = [b for name, (c, b) in self._backends.items() if backends.get(name, (None, None))[1] is not b]
        self._backends = backends
        for backend in retired:
            await backend.close()
        return routing

    async def reload(self, cfg: RouterConfig) -> None:
        """Swap to ``cfg`` in one assignment; requests in flight finish on the routing they started with."""
        routing = await self._routing_for(cfg) if self.started else build_routing(
            cfg, self.tracker, {}, self.metrics, self.admissions)
        self.routing = routing
        if self.started:
            await self.backend_checks.update(cfg.backends)
        self.sync.overflow_priority = routing.overflow_priority
        self.sync.costs = routing.costs
        self._set_notifier(cfg)
        retry = cfg.fallback
        self.sync.budget.reconfigure(retry.retry_budget, retry.min_retries_per_second, retry.retry_burst)
        self.config_hash, self.config_loaded_at, self.last_reload_ok = config_hash(cfg), time.time(), True
        self.metrics.reloads("ok").inc()
        log.info("config_reloaded", models=sorted(routing.models))

    async def reload_from_file(self) -> list[str]:
        """Reload the config file; on any error keep the current config and return the errors."""
        if self.config_path is None:
            return ["the router was started without a config file (the embedded demo); nothing to reload"]
        try:
            cfg = load_config(self.config_path)
        except ConfigError as exc:
            self.last_reload_ok = False
            self.metrics.reloads("invalid").inc()
            errors = [str(i) for i in exc.issues]
            log.warning("config_reload_rejected", errors=errors)
            return errors
        except Exception as exc:  # a loader bug: still an answer and a count, never an unhandled exception
            self.last_reload_ok = False
            self.metrics.reloads("failed").inc()
            log.exception("config_reload_failed")
            return [f"{self.config_path}:1:1: the config could not be loaded: {type(exc).__name__}"]
        try:
            await self.reload(cfg)
        except Exception as exc:  # e.g. a backend that cannot start: keep serving on the old config
            self.last_reload_ok = False
            self.metrics.reloads("failed").inc()
            log.exception("config_reload_failed")
            return [f"reload failed: {exc}"]
        return []

    def _set_notifier(self, cfg: RouterConfig) -> None:
        if self.job_lane is not None:
            hooks = cfg.webhooks
            self.job_lane.events.notifier = WebhookNotifier(
                self.connections.http, hooks.secret.get_secret_value(), attempts=hooks.attempts) if hooks else None
            self.job_lane.events.topic = self._job_topic(cfg)

    def _job_topic(self, cfg: RouterConfig) -> SnsJobNotifier | None:
        """The SNS topic finished jobs are published to (AWS state mode; config checks refuse it otherwise)."""
        from router.config import AwsStateConfig

        topic, state = cfg.notifications, cfg.state
        if topic is None or not isinstance(state, AwsStateConfig):
            return None
        from router.notify_sns import SnsJobNotifier

        region, url = topic.region or state.region, topic.endpoint_url or state.endpoint_url
        clients = self.connections.sagemaker()
        return SnsJobNotifier(lambda: clients.get(region, url, "sns"), topic.sns_topic_arn, attempts=topic.attempts)

    def storage_health(self) -> list[StorageHealth]:
        """The storage health of each job lane that runs here."""
        lanes: list[JobLane | BatchLane | None] = [self.job_lane, self.batch_lane]
        return [lane.health for lane in lanes if lane is not None]

    def _config_info(self) -> ConfigInfo:
        applied = None if self.config_file is None else self.config_file.current_hash() == self.config_hash
        return ConfigInfo(self.version, self.config_hash, self.last_reload_ok, self.config_loaded_at, applied)

    def _job_stats(self) -> StoreStats | None:
        stats = self.job_lane.stats if self.job_lane else None
        if stats is None:
            return None
        jobs = stats.jobs
        if self.batch_lane is not None:
            jobs = {k: v for k, v in stats.jobs.items() if k[0] != Lane.BATCH.value}
            jobs.update({(Lane.BATCH.value, status): n for status, n in self.batch_lane.counts.items()})
        queued, oldest = stats.queued, stats.oldest_queued_age_s
        if "*" not in queued:  # a store that counts per model: an empty queue reads 0, not "no data"
            idle = {name: 0 for name, entry in self.routing.models.items()
                    if Lane.ASYNC in entry.routes.lanes or Lane.BATCH in entry.routes.lanes}
            queued, oldest = {**idle, **queued}, {**idle, **oldest}
        return StoreStats(jobs, queued, oldest, stats.dead_lettered)

    async def _batch_buffer(self, cfg: RouterConfig, objects: ObjectStore) -> BatchBuffer:
        """The batch lane's buffer: a SQLite file beside the jobs (local), or the batch queue (aws)."""
        if isinstance(cfg.state, LocalStateConfig):
            return BatchStore(Path(cfg.state.path) / "batch.sqlite3")
        from router.batch.aws import SqsBatchBuffer
        from router.storage.aws import SqsJobStore

        state = cfg.state
        if state.batch_queue_url is None:  # the config check requires it with a batch lane
            raise ValueError("state.batch_queue_url is required for the batch lane")
        # the same records prefix as the job lane's store, so one tenant index lists both lanes' jobs
        jobs = SqsJobStore(state.bucket, state.batch_queue_url, dlq_url=state.batch_dlq_url,
                           prefix=f"{state.prefix}jobs/", region=state.region, endpoint_url=state.endpoint_url,
                           track_queued=False)
        await jobs.start()

        def hold() -> int:  # jobs held unflushed: enough for a full batch of every model
            models = self.routing.config.models.values()
            return 10 + sum(m.batch.max_records for m in models if Lane.BATCH.value in m.lanes)

        return SqsBatchBuffer(jobs, objects, lease_s=cfg.jobs.lease, max_attempts=cfg.jobs.max_attempts,
                              ttl_s=cfg.jobs.ttl, hold=hold)

    def _batch_settings(self, model: str) -> BatchConfig | None:
        cfg = self.routing.config.models.get(model)
        return cfg.batch if cfg is not None and Lane.BATCH.value in cfg.lanes else None

    def _batch_runner(self, model: str) -> BatchRunner | None:
        settings = self._batch_settings(model)
        if settings is None:
            return None
        name = self.routing.config.models[model].lanes[Lane.BATCH.value]
        bcfg = self.routing.config.backends.get(name)
        if isinstance(bcfg, SageMakerBatchBackendConfig):  # Batch Transform: one job per flushed batch
            from router.batch.transform import build_batch_runner

            return build_batch_runner(name, bcfg, self.connections)
        target = self._job_target(model, Lane.BATCH)
        if target is None:
            return None
        jobs = self.routing.config.jobs
        lane = self.batch_lane
        return LocalRunner(self.sync, target, max_payload=settings.max_payload, max_records=settings.max_records,
                           max_concurrent=settings.max_concurrent, attempts=jobs.max_attempts,
                           backoff_s=jobs.backoff, max_backoff_s=jobs.max_backoff,
                           timeout_s=jobs.invocation_timeout, stopping=lambda: lane is None or lane.stopping,
                           model=model)

    def _job_target(self, model: str, lane: Lane) -> Target | None:
        entry = self.routing.models.get(model)
        name = entry.routes.lanes.get(lane) if entry else None
        return self.routing.targets.get(name) if name else None

    async def close(self) -> None:
        self.draining = self.closing = True
        await self.backend_checks.stop()
        if self.batch_lane is not None:
            await self.batch_lane.stop()
            await self.batch_lane.store.close()
        if self.job_lane is not None:
            await self.job_lane.stop()
            await self.job_lane.objects.close()
            await self.job_lane.jobs.close()
        for _, backend in self._backends.values():
            await backend.close()
        await self.connections.close()
        log.info("router_stopped")

    def explain(self, req: RequestFeatures, state: Mapping[str, StateOverride] | None = None) -> dict[str, Any]:
        """The decision for ``req`` as JSON-ready data, without calling any backend: every policy's verdict in
        chain order and the answer the client would get; ``state`` describes backends as they are not (yet)."""
        entry = self.routing.models[req.model]
        snap = self.tracker.snapshot(entry.routes.lanes, entry.routes.limits)
        if state:
            snap = with_state(snap, state)
        verdicts: list[Verdict] = []
        route = self.routing.engine.decide(req, snap, verdicts)
        out = route_json(route, req)
        out["queue"] = self._queue_positions(route, req, snap if state else None)
        chain = [p.name for p in entry.routes.chain]
        out["policies"] = [verdict_json(v) for v in verdicts] + not_consulted(chain, verdicts)
        shadows = self.routing.shadows
        if shadows is not None and req.model in shadows.models:
            out["shadow"] = route_json(shadows.engine.decide(req, snap), req)  # not counted: nothing was served
        out["answer"] = expected_answer(route, req, out["queue"], max_bytes=entry.max_bytes,
                                        overflow_priority=self.routing.overflow_priority,
                                        deferral=self.routing.engine.deferral(req))
        return out

    def shadow_status(self) -> dict[str, Any]:
        """What each model's shadow chain decided on live traffic beside the live chain, and the estimated cost
        of both (``router.shadow.Shadows.status``); empty without shadow chains. For the status page."""
        shadows = self.routing.shadows
        return shadows.status() if shadows is not None else {}

    def _queue_positions(self, route: Route, req: RequestFeatures,
                         described: Snapshot | None = None) -> list[dict[str, Any]]:
        """Per sync hop: a free slot now, or the position this request would take in its queue and its wait.
        With a ``described`` snapshot (explain's state), its backends are read instead of the live queues."""
        now = self.clock()
        deadline_at = now + req.deadline_ms / 1000.0 if req.deadline_ms else None
        weight = self.routing.weight(req.caller)
        out = []
        for hop in route.hops:
            admission = self.admissions.by_backend.get(hop.backend)
            if hop.lane in JOB_LANES or admission is None:
                continue
            state = described.backends.get(hop.backend) if described is not None else None
            if state is not None:
                room, depth = state.available, state.queue_depth
                ahead, wait_s = depth, state.wait_for(req.priority)
            else:
                room, depth = admission.has_room(), len(admission.queue)
                ahead, wait_s = admission.predict(req.priority, req.caller, weight, deadline_at)
            budget_s = admission.budget_s(now, deadline_at)
            out.append({"lane": hop.lane.value, "backend": hop.backend, "room_now": room,
                        "queue_depth": depth, "ahead": ahead,
                        # None: more urgent traffic takes every slot, the wait has no bound
                        "predicted_wait_s": round(wait_s, 6) if math.isfinite(wait_s) else None,
                        "max_wait_s": round(budget_s, 6),
                        "would_wait": not room and budget_s > 0.0 and wait_s <= budget_s})
        return out


def route_json(route: Route, req: RequestFeatures) -> dict[str, Any]:
    d = route.decision
    out: dict[str, Any] = {
        "model": req.model,
        "lane": d.lane.value,
        "backend": route.hops[0].backend if route.hops else None,
        "fallback": [{"lane": h.lane.value, "backend": h.backend} for h in route.hops[1:]],
        "reason": d.reason,
        "policy": d.policy,
        "request": {
            "caller": req.caller,
            "urgency": req.urgency,
            "priority": req.priority,
            "payload_bytes": req.payload_bytes,
            "deadline_ms": req.deadline_ms,
            "accepts_async": req.accepts_async,
        },
    }
    if d.lane is Lane.SHED:
        out["status"] = d.status
        out["retry_after_s"] = d.retry_after_s
    return out
