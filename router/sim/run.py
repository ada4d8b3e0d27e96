"""One config's simulation: a trace through the router's own decision code on a virtual clock.

Per request, as ``router.api.dataplane`` does it: the real ``FeatureExtractor`` turns the trace's fields
into features, the real ``SaturationTracker`` (its limits and breakers on the virtual clock) gives the
snapshot, the real ``PolicyEngine`` decides, and the sync lane's own walk (``router.lanes.walk``) calls,
falls back, waits and gives up. Only the backends are models (``router.sim.backends``), and the job lanes'
queues (``router.sim.jobs``).
"""

from __future__ import annotations

import gc
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from router.config import (
    RouterConfig,
    SageMakerAsyncBackendConfig,
    SageMakerBatchBackendConfig,
    SimulateConfig,
)
from router.cost import BackendCost, costs
from router.features import RequestError
from router.flow.budget import RetryBudget
from router.flow.door import Door, QueueSettings, Ticket
from router.flow.queue import Waiter
from router.lanes.walk import CAPACITY_REASONS, Call, Failed, Refusal, Served, Wait, job_after_failure, walk
from router.metrics import RouterMetrics
from router.runtime import build_routing, queue_settings
from router.sim.backends import AsyncEndpoint, BatchTransform, Instances, Modelled, Serverless, ServiceTime
from router.sim.jobs import AsyncLane, BatchLane
from router.sim.loop import EventLoop
from router.sim.result import BackendUse, Result
from router.sim.trace import TraceRequest
from router.state import BackendTracker, SaturationTracker
from router.types import JOB_LANES, BackendError, FailureKind, Hop, Lane, RequestFeatures

_O_SHED, _O_FAILED, _O_REJECTED = 4, 5, 6
_SHED = Lane.SHED  # enum reads cost ~0.1 µs each in Python 3.11
_EXTRACTED_SIZE = 16_384  # header sets whose features are kept (deadlines vary: bounded, so memory stays flat)
_tuple_new = tuple.__new__
_OUTCOME_COL = {"realtime": 0, "serverless": 1, "async": 2, "batch": 3}


class MissingServiceTime(ValueError):
    """Backends the simulator has no service time for (no trace observations, no simulate.service_time)."""


@dataclass(eq=False, slots=True)
class _SimWaiter(Waiter):
    request: Any = None
    ticket: Ticket | None = None
    settled: bool = False  # granted, turned away or expired: later news is stale


class SimDoor(Door):
    """A backend's admission on the virtual clock: the rules are ``router.flow.door``'s; a waiter resumes its
    walk at the instant its slot (or its refusal) comes, as a live waiter's future completes."""

    def __init__(self, name: str, tracker: BackendTracker, settings: QueueSettings, loop: EventLoop,
                 resume: Callable[[Any, Refusal | None], None], depth: Callable[[float], None]) -> None:
        super().__init__(name, tracker, settings, clock=loop.clock)
        self.loop = loop
        self.resume = resume
        self.depth = depth

    def wait(self, r: Any, ticket: Ticket, now: float, budget_s: float, deadline_at: float | None) -> None:
        waiter = _SimWaiter(ticket.priority, ticket.tenant, ticket.weight,
                            math.inf if deadline_at is None else deadline_at, now, request=r, ticket=ticket)
        if not self.enqueue(waiter, now):
            self.resume(r, Refusal("full", self.refusal_wait(ticket, deadline_at)))
            return
        self.depth(now)
        self.loop.at(now + max(0.0, budget_s), self._expire, (waiter, budget_s))

    def _expire(self, arg: tuple[_SimWaiter, float]) -> None:
        waiter, budget_s = arg
        if not waiter.settled:
            waiter.settled = True
            self.expired(waiter)
            self.resume(waiter.request, Refusal("timeout", budget_s))

    def grant(self, waiter: Waiter) -> bool:
        assert isinstance(waiter, _SimWaiter)
        if waiter.settled:
            return False
        waiter.settled = True
        self.loop.at(self.loop.now, self._granted, waiter)
        return True

    def _granted(self, waiter: _SimWaiter) -> None:
        self.reserved -= 1  # its call starts now: the slot becomes in-flight
        self.resume(waiter.request, None)

    def turn_away(self, waiter: Waiter, reason: str) -> None:
        assert isinstance(waiter, _SimWaiter)
        if not waiter.settled:
            waiter.settled = True
            self.loop.at(self.loop.now, self._turned_away, (waiter, reason))

    def _turned_away(self, arg: tuple[_SimWaiter, str]) -> None:
        waiter, reason = arg
        assert waiter.ticket is not None
        deadline = None if waiter.deadline == math.inf else waiter.deadline
        self.resume(waiter.request, Refusal(reason, self.refusal_wait(waiter.ticket, deadline)))

    def wait_background(self, fn: Callable[[Any], None], arg: Any) -> None:
        if self.background_room(self.loop.now):
            fn(arg)
        else:
            self.background.append((fn, arg))

    def grant_background(self, token: Any) -> bool:
        self.loop.at(self.loop.now, self._background_granted, token)
        return True

    def _background_granted(self, token: tuple[Callable[[Any], None], Any]) -> None:
        self.reserved -= 1
        token[0](token[1])


class _Target:
    __slots__ = ("admission", "backend", "tracker")

    def __init__(self, tracker: BackendTracker, admission: SimDoor, backend: Modelled) -> None:
        self.tracker = tracker
        self.admission = admission
        self.backend = backend


class _Request:
    __slots__ = ("arrival", "deadline_at", "features", "gen", "job_hop", "lane", "req", "ticket")

    def __init__(self, req: TraceRequest, arrival: float) -> None:
        self.req = req
        self.arrival = arrival
        self.deadline_at: float | None = None
        self.gen: Any = None
        self.job_hop: Hop | None = None
        self.features: Any = None
        self.lane = ""
        self.ticket: Ticket | None = None


class _Call:
    __slots__ = ("asked", "done", "hop", "request", "target")

    def __init__(self, request: _Request, hop: Hop, target: _Target, asked: float) -> None:
        self.request = request
        self.hop = hop
        self.target = target
        self.asked = asked
        self.done = False


@contextmanager
def _quiet_gc() -> Iterator[None]:
    """Collect young objects less often during a run (as the live server does after start-up): a simulation
    allocates many short-lived tuples while holding many long-lived events."""
    before = gc.get_threshold()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def service_time_of(name: str, sim: SimulateConfig | None, fitted: Mapping[str, ServiceTime]) -> ServiceTime | None:
    if sim is not None and sim.service_time is not None:
        return ServiceTime(sim.service_time, sim.service_p99)
    return fitted.get(name)


class Simulation:
    """One config on a virtual clock. ``fitted``: service times learned from the trace, by backend."""

    def __init__(self, cfg: RouterConfig, name: str = "config", fitted: Mapping[str, ServiceTime] | None = None,
                 seed: int = 1) -> None:
        self.cfg = cfg
        self.name = name
        self.loop = loop = EventLoop()
        self.rng = random.Random(seed)
        self.result = Result(name)
        self.tracker = SaturationTracker(loop.clock)
        self.routing = build_routing(cfg, self.tracker, {}, RouterMetrics())
        retry = cfg.fallback
        self.budget = RetryBudget(retry.retry_budget, retry.min_retries_per_second, loop.clock, retry.retry_burst)
        self.costs: dict[str, BackendCost] = costs(cfg)
        fitted = dict(fitted or {})
        for name, bcfg in cfg.backends.items():  # no sync call reached it (a job lane's): its model's compute
            if service_time_of(name, bcfg.simulate, fitted) is None:
                peers = [fitted[b] for m in cfg.models.values() if name in m.lanes.values()
                         for b in m.lanes.values() if b in fitted]
                if peers:
                    fitted[name] = peers[0]
        missing = [n for n, b in cfg.backends.items() if service_time_of(n, b.simulate, fitted) is None]
        if missing:
            raise MissingServiceTime(
                f"no service time for backend(s) {', '.join(sorted(missing))}: no answered call of theirs in the "
                "trace (a synthetic trace has none); set backends.<name>.simulate.service_time")
        self.targets: dict[str, _Target] = {}
        for bname, bcfg in cfg.backends.items():
            tracker = self.tracker.trackers[bname]
            model = self._model(bname, bcfg, fitted)
            door = SimDoor(bname, tracker, queue_settings(bcfg), loop, self._drive, self._queue_depth)
            self.targets[bname] = _Target(tracker, door, model)
        self.overflow = self.routing.overflow_priority
        self._timeouts = {n: b.timeout for n, b in cfg.backends.items()}
        self._key = 0
        # how a trace's tenant identifies itself to the extractor: its API key, else its SigV4 access key id
        self._keys: dict[str, tuple[str, str]] = {}
        for c in reversed(cfg.callers):
            if c.api_key is not None:
                self._keys[c.tenant] = (cfg.server.api_key_header.lower(), c.api_key.get_secret_value())
            elif c.aws_access_key_id is not None:
                self._keys[c.tenant] = ("authorization", f"AWS4-HMAC-SHA256 Credential={c.aws_access_key_id}"
                                        "/20260101/us-east-1/sagemaker/aws4_request, SignedHeaders=host, Signature=0")
        self._urgency_header = cfg.urgency.header.lower()
        self._levels = set(cfg.urgency.levels)
        self._extracted: dict[tuple[Any, ...], tuple[RequestFeatures | RequestError, Ticket | None]] = {}
        # per route's hops (by identity: the engine keeps its resolved routes): whether it starts on a job lane,
        # its sync hops, its job hop
        self._splits: dict[int, tuple[tuple[Hop, ...], bool, tuple[Hop, ...], Hop | None]] = {}
        series = self.result.series
        self.jobs = AsyncLane(loop, self.rng, cfg.jobs, self._room, self._job_call, self._job_done,
                              depth=lambda t, n: series.peak(t, 1, n))
        batch_models = {m: c for m, c in cfg.models.items() if "batch" in c.lanes}
        batch_backends = {m: c.lanes["batch"] for m, c in batch_models.items()}
        transform = {n for n, b in cfg.backends.items() if isinstance(b, SageMakerBatchBackendConfig)}
        per_record = {n: (b.simulate.per_record if b.simulate else 0.0) for n, b in cfg.backends.items()}
        self.batch = BatchLane(loop, {m: c.batch for m, c in batch_models.items()}, batch_backends, transform,
                               per_record, self._room, self._job_call, self._job_done,
                               depth=lambda t, n: series.peak(t, 2, n))

    # --- backends -------------------------------------------------------------------------------

    def _model(self, name: str, bcfg: Any, fitted: Mapping[str, ServiceTime]) -> Modelled:
        sim: SimulateConfig = bcfg.simulate or SimulateConfig()
        service = service_time_of(name, sim, fitted)
        assert service is not None
        cost = self.costs.get(name)
        limit = bcfg.max_concurrency
        router_limit = limit if isinstance(limit, int) else limit.max
        loop, rng = self.loop, self.rng
        if isinstance(bcfg, SageMakerBatchBackendConfig):
            return BatchTransform(name, loop, rng, service, cost, bcfg.instance_count, sim.startup, sim.fail_rate)
        if isinstance(bcfg, SageMakerAsyncBackendConfig):
            instances = (sim.autoscale.max if sim.autoscale else cost.instances if cost else 1)
            return AsyncEndpoint(name, loop, rng, service, cost, instances, sim.per_instance or 1,
                                 sim.scale_to_zero_after, sim.startup, sim.fail_rate)
        if bcfg.serverless is not None:
            return Serverless(name, loop, rng, service, cost,
                              sim.max_concurrency or (limit if isinstance(limit, int) else 20),
                              sim.cold_start if sim.cold_start is not None else bcfg.serverless.cold_start,
                              sim.idle_after if sim.idle_after is not None else bcfg.serverless.idle_after,
                              shared=sim.cold_starts == "endpoint",
                              provisioned=cost.provisioned if cost else 0, fail_rate=sim.fail_rate)
        instances = cost.instances if cost else 1
        if sim.autoscale is not None:
            instances = max(sim.autoscale.min, min(sim.autoscale.max, max(1, instances)))
        per_instance = sim.per_instance or max(1, router_limit // max(1, instances))
        return Instances(name, loop, rng, service, cost, max(1, instances), per_instance,
                         queue=sim.overload == "queue", autoscale=sim.autoscale, fail_rate=sim.fail_rate)

    # --- the walk's counters --------------------------------------------------------------------

    def fallback(self, model: str, from_backend: str, to_backend: str, reason: str) -> None:
        self.result.fallbacks += 1

    def budget_exhausted(self, model: str) -> None:
        self._reason("retry_budget_exhausted")

    def _reason(self, why: str) -> None:
        reasons = self.result.reasons
        reasons[why] = reasons.get(why, 0) + 1

    # --- requests -------------------------------------------------------------------------------

    def run(self, requests: Iterable[TraceRequest], progress: Callable[[int], None] | None = None) -> Result:
        with _quiet_gc():
            return self._run(requests, progress)

    def _run(self, requests: Iterable[TraceRequest], progress: Callable[[int], None] | None) -> Result:
        loop = self.loop
        arrive = self._arrive
        n = 0
        for req in requests:
            if req.t > loop.now:
                loop.run_until(req.t)
            arrive(req)
            n += 1
            if progress is not None and not n & 0x3FFF:
                progress(n)
        end = loop.now
        loop.draining = True
        loop.run_until(math.inf)
        return self._finish(n, end)

    def _headers(self, req: TraceRequest) -> dict[str, str]:
        """The headers a client would have sent for this trace request."""
        headers = {"content-type": req.content_type}
        if req.urgency is not None and req.urgency in self._levels:
            headers[self._urgency_header] = req.urgency
        key = self._keys.get(req.caller)
        if key is not None:
            headers[key[0]] = key[1]
        if req.deadline_ms is not None:
            headers["x-deadline-ms"] = str(req.deadline_ms)
        if req.accepts_async:
            headers["prefer"] = "respond-async" if req.wait_s is None else f"respond-async, wait={int(req.wait_s)}"
        return headers

    def _features(self, req: TraceRequest) -> tuple[RequestFeatures | RequestError, Ticket | None]:
        """The live ``FeatureExtractor``'s features for the request's headers (or its refusal), and its ticket for
        the admission queues. Extracting is a pure function of the headers and traces repeat a few header sets, so
        each set is extracted once; the payload size and the request's key are the request's own."""
        ident = (req.model, req.content_type, req.urgency, req.caller, req.deadline_ms, req.accepts_async, req.wait_s)
        known = self._extracted.get(ident)
        if known is None:
            try:
                extracted = self.routing.features.extract(req.model, self._headers(req), 0)
                known = (extracted, Ticket(extracted.priority, extracted.caller,
                                           self.routing.weight(extracted.caller)))
            except RequestError as exc:
                known = (exc, None)
            if len(self._extracted) >= _EXTRACTED_SIZE:
                self._extracted.clear()
            self._extracted[ident] = known
        f, ticket = known
        if type(f) is not RequestFeatures:
            return known
        # model, caller, payload_bytes, content_type, urgency, priority, deadline_ms, accepts_async, wait_s, key
        return _tuple_new(RequestFeatures, (f[0], f[1], req.payload_bytes, f[3], f[4], f[5], f[6], f[7], f[8],
                                            self._key)), ticket

    def _split(self, hops: tuple[Hop, ...]) -> tuple[tuple[Hop, ...], bool, tuple[Hop, ...], Hop | None]:
        """(hops, whether the first is a job lane's, the sync hops, the first job hop), once per route."""
        job_hop = next((h for h in hops if h.lane in JOB_LANES), None)
        split = (hops, bool(hops) and hops[0].lane in JOB_LANES, tuple(h for h in hops if h.lane not in JOB_LANES),
                 job_hop)
        if len(self._splits) >= _EXTRACTED_SIZE:
            self._splits.clear()
        self._splits[id(hops)] = split
        return split

    def _arrive(self, req: TraceRequest) -> None:
        now = self.loop.now
        r = _Request(req, now)
        self._key += 1  # the request's key, as a request id's hash is live: weighted policies split on it
        result = self.result
        routing = self.routing
        if req.deadline_ms is not None:
            result.with_deadline += 1
        entry = routing.models.get(req.model)
        if entry is None:
            return self._end(r, _O_REJECTED, "unknown_model")
        features, ticket = self._features(req)
        if type(features) is not RequestFeatures:
            assert isinstance(features, RequestError)
            return self._end(r, _O_REJECTED, features.error_type)
        assert ticket is not None
        r.features = features
        if features.deadline_ms is not None:
            r.deadline_at = now + features.deadline_ms / 1000.0
        route = routing.engine.decide(features, self.tracker.snapshot(entry.routes.lanes, entry.routes.limits))
        decision = route.decision
        if decision.lane is _SHED:
            return self._end(r, _O_SHED, decision.reason)
        if decision.deferred_from is not None:
            result.deferred += 1
        hops = route.hops
        if not hops:
            return self._end(r, _O_REJECTED, "too_large")
        split = self._splits.get(id(hops))
        if split is None or split[0] is not hops:
            split = self._split(hops)
        if split[1]:
            return self._accept(r, hops[0])
        hops = split[2]
        r.job_hop = split[3]
        r.ticket = ticket
        r.gen = walk(req.model, hops, ticket, self.targets,
                     self.budget, self.overflow, self.loop.clock, self, r.deadline_at)
        self._drive(r, None)

    def _drive(self, r: _Request, outcome: Any) -> None:
        try:
            step = r.gen.send(outcome)
        except StopIteration as stop:
            self._walked(r, stop.value)
            return
        if type(step) is Call:
            self._call(r, step)
        else:
            assert isinstance(step, Wait)
            assert r.ticket is not None
            self.targets[step.hop.backend].admission.wait(r, r.ticket, step.now, step.budget_s, r.deadline_at)

    def _queue_depth(self, now: float) -> None:
        self.result.series.peak(now, 0, sum(t.admission.queue.size for t in self.targets.values()))

    def _call(self, r: _Request, step: Call) -> None:
        hop = step.hop
        target = self.targets[hop.backend]
        tracker = target.tracker
        now = step.now
        tracker.start(now)
        call = _Call(r, hop, target, now)
        limit = self._timeouts[hop.backend]
        if r.deadline_at is not None:
            limit = min(limit, r.deadline_at - now)
        req = r.req
        replay = cold = None
        if req.backend == hop.backend and req.status == 200 and req.duration_s is not None:
            # served where the trace says it was: its own recorded time, stalls included; a call that waited for a
            # cold start brings it to the model, which decides whether this call waits for one
            own = req.duration_s - (req.queue_wait_s or 0.0)
            if req.cold_start:
                cold = own
            else:
                replay = own
        seconds = target.backend.call(0.0, self._answered, call, replay, cold)
        if seconds is None or seconds > limit:
            self.loop.at(now + limit, self._timed_out, call)

    def _answered(self, call: _Call, seconds: float, failure: FailureKind | None) -> None:
        if call.done:
            return
        call.done = True
        now = self.loop.now
        tracker = call.target.tracker
        if failure is None:
            tracker.succeeded(now, now - call.asked)
            self._drive(call.request, None)
        else:
            tracker.failed(now, failure)
            self._drive(call.request, BackendError(failure, failure.value))

    def _timed_out(self, call: _Call) -> None:
        if call.done:
            return
        call.done = True
        call.target.tracker.failed(self.loop.now, FailureKind.TIMEOUT)
        self._drive(call.request, BackendError(FailureKind.TIMEOUT, "timeout"))

    def _walked(self, r: _Request, outcome: Served | Failed) -> None:
        if type(outcome) is Served:
            lane = outcome.hop.lane.value
            now = self.loop.now
            self._end(r, _OUTCOME_COL[lane], None, now - r.arrival)
            return
        assert isinstance(outcome, Failed)
        engine = self.routing.engine
        job = job_after_failure(outcome.reason, outcome.error, r.job_hop, lambda: engine.deferral(r.features))
        if job is None:
            return self._end(r, _O_FAILED, outcome.reason)
        self.result.fallbacks += 1
        self._accept(r, job, deferred=outcome.reason in CAPACITY_REASONS)

    # --- job lanes ------------------------------------------------------------------------------

    def _accept(self, r: _Request, hop: Hop, deferred: bool = False) -> None:
        if deferred:
            self.result.deferred += 1
        r.lane = hop.lane.value
        if hop.lane is Lane.ASYNC:
            self.jobs.submit(r, hop.backend, r.features.priority)
        else:
            self.batch.submit(r, r.req.model, r.req.payload_bytes)

    def _room(self, backend: str, fn: Callable[[Any], None], arg: Any) -> None:
        self.targets[backend].admission.wait_background(fn, arg)

    def _job_call(self, backend: str, extra_s: float, done: Callable[[Any, FailureKind | None], None],
                  token: Any) -> None:
        target = self.targets[backend]
        now = self.loop.now
        target.tracker.start(now)

        def answered(_: Any, seconds: float, failure: FailureKind | None) -> None:
            t = self.loop.now
            if failure is None:
                target.tracker.succeeded(t, seconds)
            else:
                target.tracker.failed(t, failure)
            done(token, failure)

        target.backend.call(extra_s, answered, None)

    def _job_done(self, r: _Request, failed: bool) -> None:
        self._end(r, _OUTCOME_COL[r.lane] if not failed else _O_FAILED, "job_failed" if failed else None,
                  self.loop.now - r.arrival)

    # --- accounting -----------------------------------------------------------------------------

    def _end(self, r: _Request, col: int, reason: str | None, latency: float | None = None) -> None:
        result = self.result
        name = _NAMES[col]
        result.outcomes[name] += 1
        result.series.add(r.arrival, col)
        if latency is not None:
            result.latency[name].add(latency)
        if reason is not None:
            self._reason(reason)
        if r.deadline_at is not None and (latency is None or r.arrival + latency > r.deadline_at):
            result.deadline_misses += 1

    def _finish(self, n: int, end: float) -> Result:
        result = self.result
        result.requests = n
        span = result.span_s = max(end, 1e-9)
        total = 0.0
        for name, target in self.targets.items():
            model = target.backend
            fixed = model.fixed_cost(span)
            cost = fixed + model.call_cost
            total += cost
            slots = model.slot_seconds(span)
            use = BackendUse(name, model.cost.billing.value if model.cost else "unpriced", model.calls,
                             model.cold_starts, model.refused, model.busy_s / slots if slots > 0 else 0.0, cost,
                             getattr(model, "peak_instances", None))
            result.backends[name] = use
            self._spread_cost(fixed, model.call_cost, span)
        result.cost = total
        return result

    def _spread_cost(self, fixed: float, per_call: float, span: float) -> None:
        series = self.result.series
        buckets = len(series.buckets)
        if not buckets:
            return
        width = series.width
        col = series.sums.index("cost")
        for i, row in enumerate(series.buckets):
            share = min(width, max(0.0, span - i * width)) / span
            row[col] += (fixed + per_call) * share


_NAMES = ("realtime", "serverless", "async", "batch", "shed", "failed", "rejected")


def simulate(cfg: RouterConfig, requests: Iterable[TraceRequest], name: str = "config",
             fitted: Mapping[str, ServiceTime] | None = None, seed: int = 1,
             progress: Callable[[int], None] | None = None) -> Result:
    """Run ``requests`` through ``cfg`` on a virtual clock."""
    return Simulation(cfg, name, fitted, seed).run(requests, progress)

