"""Modelled backends: what a real-time endpoint, a serverless one, an async one and Batch Transform do with
the calls the router makes, on the virtual clock.

Every model takes ``call(extra_s, done, token)`` and later runs ``done(token, seconds, failure)``: how long
the call took as the router saw it and its failure (None when answered). A replayed call may bring its recorded
time: ``service_s`` (a warm call's), or ``cold_total_s`` (a call that waited for a cold start: a serverless
model that cold-starts for it takes its cold start from it). ``call`` returns that duration when
it is known at once (None when the call waits inside the backend), so the router's timeout needs no event
of its own when the answer comes first. Each keeps what its cost needs
(instance-seconds, GB-seconds, jobs) and its utilisation.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from router.config import AutoscaleConfig
from router.cost import BackendCost, Billing
from router.sim.loop import EventLoop
from router.types import FailureKind

Done = Callable[[Any, float, FailureKind | None], None]
REFUSE_S = 0.001  # a refusal (429/503) comes back after about a round trip
_Z99 = 2.3263  # standard normal quantiles
_Z75 = 0.6745


class ServiceTime:
    """Lognormal service times from a median and a 99th percentile (or a spread)."""

    __slots__ = ("_mu", "_sigma", "p50", "p99")

    def __init__(self, p50: float, p99: float | None = None, sigma: float = 0.25) -> None:
        self.p50 = p50
        self._mu = math.log(p50)
        # a p99 no higher than the median: every call takes the same time
        self._sigma = sigma if p99 is None else max(0.0, math.log(p99 / p50) / _Z99) if p99 > p50 else 0.0
        self.p99 = p50 * math.exp(self._sigma * _Z99)

    @classmethod
    def from_quartile(cls, p50: float, p75: float) -> ServiceTime:
        """Fitted from a median and an upper quartile: robust to the few slow outliers (cold calls) of a trace."""
        sigma = math.log(p75 / p50) / _Z75 if p75 > p50 else 0.05
        return cls(p50, sigma=min(sigma, 2.0))

    def scaled(self, factor: float) -> ServiceTime:
        return ServiceTime(self.p50 * factor, sigma=self._sigma)

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self._mu, self._sigma) if self._sigma > 0.0 else self.p50


class EmpiricalServiceTime(ServiceTime):
    """Service times drawn from the durations a trace recorded (its histogram, the slowest 1% left out: those
    are cold starts and stalls, which the backend models add themselves)."""

    __slots__ = ("_cumulative", "_values")

    def __init__(self, values: list[float], weights: list[int]) -> None:
        total = sum(weights)
        keep = total * 0.99
        cumulative, vals, seen = [], [], 0
        for v, w in zip(values, weights, strict=True):
            if seen >= keep:
                break
            seen += w
            cumulative.append(seen)
            vals.append(v)
        self._cumulative = cumulative
        self._values = vals
        super().__init__(vals[bisect.bisect_left(cumulative, seen / 2)], sigma=0.0)
        self.p99 = vals[-1]

    def scaled(self, factor: float) -> ServiceTime:
        return EmpiricalServiceTime([v * factor for v in self._values],
                                    [b - a for a, b in zip([0, *self._cumulative], self._cumulative, strict=False)])

    def sample(self, rng: random.Random) -> float:
        return self._values[bisect.bisect_right(self._cumulative, rng.random() * self._cumulative[-1])
                            if self._cumulative[-1] else 0]


class InstanceMeter:
    """Instance-seconds of a fleet whose size changes over time."""

    __slots__ = ("_since", "count", "seconds")

    def __init__(self, count: int, now: float = 0.0) -> None:
        self.count = count
        self.seconds = 0.0
        self._since = now

    def set(self, now: float, count: int) -> None:
        self.seconds += (now - self._since) * self.count
        self._since = now
        self.count = count

    def close(self, now: float) -> float:
        self.set(now, self.count)
        return self.seconds


class Modelled:
    """What every modelled backend keeps: calls, busy time, cold starts, cost."""

    billing: Billing | None = None

    def __init__(self, name: str, loop: EventLoop, rng: random.Random, service: ServiceTime,
                 cost: BackendCost | None, fail_rate: float = 0.0) -> None:
        self.name = name
        self.loop = loop
        self.rng = rng
        self.service = service
        self.cost = cost
        self.fail_rate = fail_rate
        self.inflight = 0
        self.calls = 0
        self.cold_starts = 0
        self.refused = 0
        self.busy_s = 0.0  # slot-seconds spent serving
        self.call_cost = 0.0  # $ billed per call (serverless GB-seconds, transform jobs)

    def capacity(self) -> int:
        raise NotImplementedError

    def call(self, extra_s: float, done: Done, token: Any, service_s: float | None = None,
             cold_total_s: float | None = None) -> float | None:
        raise NotImplementedError

    def slot_seconds(self, span_s: float) -> float:
        """Slot-seconds available over the run (the denominator of utilisation)."""
        return self.capacity() * span_s

    def fixed_cost(self, span_s: float) -> float:
        """$ that accrued with time (instances running, provisioned concurrency) over ``span_s``."""
        return self.cost.fixed_per_hour * span_s / 3600.0 if self.cost is not None else 0.0

    def _failure(self) -> FailureKind | None:
        return FailureKind.SERVER_ERROR if self.fail_rate and self.rng.random() < self.fail_rate else None

    def _refuse(self, kind: FailureKind, done: Done, token: Any) -> float:
        self.refused += 1
        self.loop.after(REFUSE_S, lambda _: done(token, REFUSE_S, kind))
        return REFUSE_S


class Instances(Modelled):
    """A real-time endpoint or a model server: ``instances`` x ``per_instance`` slots. Above them it refuses
    (503) or queues the call inside. With ``autoscale`` the instance count tracks a busy-share target, new
    instances serving ``delay`` after the decision (and billed from it)."""

    def __init__(self, name: str, loop: EventLoop, rng: random.Random, service: ServiceTime,
                 cost: BackendCost | None, instances: int, per_instance: int, queue: bool = False,
                 autoscale: AutoscaleConfig | None = None, fail_rate: float = 0.0) -> None:
        super().__init__(name, loop, rng, service, cost, fail_rate)
        self.instances = instances
        self.per_instance = per_instance
        self.queue = queue
        self.waiting: deque[tuple[float, Done, Any, float]] = deque()
        self.meter = InstanceMeter(instances)
        self.autoscale = autoscale
        self._pending = 0  # instances launched, not serving yet
        self._busy_mark = 0.0  # busy_s at the last autoscaling decision
        self._last_in = -math.inf
        self.peak_instances = instances
        self._since_busy = 0.0
        if autoscale is not None:
            loop.after(autoscale.interval, self._evaluate)

    def capacity(self) -> int:
        return self.instances * self.per_instance

    def call(self, extra_s: float, done: Done, token: Any, service_s: float | None = None,
             cold_total_s: float | None = None) -> float | None:
        self.calls += 1
        service = (self.service.sample(self.rng) if service_s is None else service_s) + extra_s
        if self.inflight < self.instances * self.per_instance:
            return self._start(service, done, token, self.loop.now)
        if self.queue:
            self.waiting.append((service, done, token, self.loop.now))
            return None
        return self._refuse(FailureKind.UNAVAILABLE, done, token)

    def _start(self, service: float, done: Done, token: Any, asked: float) -> float:
        self.inflight += 1
        self.busy_s += service
        self.loop.after(service, self._end, (done, token, asked))
        return service

    def _end(self, arg: tuple[Done, Any, float]) -> None:
        done, token, asked = arg
        self.inflight -= 1
        now = self.loop.now
        if self.waiting and self.inflight < self.instances * self.per_instance:
            service, d, t, a = self.waiting.popleft()
            self._start(service, d, t, a)
        done(token, now - asked, self._failure())

    # --- autoscaling (target tracking on the busy share of the slots) -----------------------------

    def _evaluate(self, _: Any) -> None:
        a = self.autoscale
        assert a is not None
        now = self.loop.now
        if self.loop.draining and not self.inflight and not self.waiting:
            return  # the run is over: no more decisions
        slots = max(1, self.instances * self.per_instance)
        busy = self.busy_s - self._busy_mark + self.inflight * 0.0
        self._busy_mark = self.busy_s
        share = busy / (slots * a.interval)
        want = max(a.min, min(a.max, math.ceil(self.instances * share / a.target) if share > 0 else a.min))
        if want > self.instances + self._pending:
            add = want - self.instances - self._pending
            self._pending += add
            self.meter.set(now, self.meter.count + add)
            self.loop.after(a.delay, self._ready, add)
        elif want < self.instances and self._pending == 0 and now - self._last_in >= a.cooldown:
            self._last_in = now
            self.instances = want
            self.meter.set(now, want)
        self.loop.after(a.interval, self._evaluate)

    def _ready(self, add: int) -> None:
        self._pending -= add
        self.instances += add
        self.peak_instances = max(self.peak_instances, self.instances)
        while self.waiting and self.inflight < self.instances * self.per_instance:
            service, d, t, a = self.waiting.popleft()
            self._start(service, d, t, a)

    def fixed_cost(self, span_s: float) -> float:
        if self.cost is None:
            return 0.0
        seconds = self.meter.close(span_s) if self.autoscale is not None else self.instances * span_s
        return self.cost.instance_time(seconds)

    def slot_seconds(self, span_s: float) -> float:
        seconds = self.meter.close(span_s) if self.autoscale is not None else self.instances * span_s
        return seconds * self.per_instance


class Serverless(Modelled):
    """A serverless endpoint: at most ``max_concurrency`` calls (429 above), containers kept warm for
    ``idle_after`` after their last call, a cold start for a call no warm container takes. With
    ``shared`` cold starts the whole endpoint is warm or cold at once (one cold start all calls wait for),
    as the demo's model server does."""

    def __init__(self, name: str, loop: EventLoop, rng: random.Random, service: ServiceTime,
                 cost: BackendCost | None, max_concurrency: int, cold_start_s: float, idle_after_s: float,
                 shared: bool = False, provisioned: int = 0, fail_rate: float = 0.0) -> None:
        super().__init__(name, loop, rng, service, cost, fail_rate)
        self.max_concurrency = max_concurrency
        self.cold_start_s = cold_start_s
        self.idle_after_s = idle_after_s
        self.shared = shared
        self.provisioned = provisioned
        self.warm: list[float] = []  # free-since times of idle warm containers, most recent last
        self._warm_at = -math.inf  # shared: the endpoint is warm from here...
        self._last_done = -math.inf  # ...and stays warm until idle_after after its last call
        self.gb_seconds = 0.0

    def capacity(self) -> int:
        return self.max_concurrency

    def call(self, extra_s: float, done: Done, token: Any, service_s: float | None = None,
             cold_total_s: float | None = None) -> float | None:
        self.calls += 1
        if self.inflight >= self.max_concurrency:
            return self._refuse(FailureKind.THROTTLED, done, token)
        now = self.loop.now
        cold_s = 0.0
        if self.shared:
            if now < self._warm_at:
                cold_s = self._warm_at - now  # a cold start under way: wait for it
            elif self.inflight == 0 and now - self._last_done > self.idle_after_s:
                cold_s = self.cold_start_s if cold_total_s is None else max(0.0, cold_total_s - self.service.p50)
                self._warm_at = now + cold_s
                self.cold_starts += 1
        elif self.inflight >= self.provisioned:
            warm = self.warm
            horizon = now - self.idle_after_s
            while warm and warm[-1] < horizon:
                warm.clear()  # the most recent one expired: all older ones did too
            if warm:
                warm.pop()
            else:
                cold_s = self.cold_start_s if cold_total_s is None else max(0.0, cold_total_s - self.service.p50)
                self.cold_starts += 1
        self.inflight += 1
        service = (self.service.sample(self.rng) if service_s is None else service_s) + extra_s
        self.busy_s += service
        if self.cost is not None:
            cost = self.cost.call(service)
            self.call_cost += cost
            self.gb_seconds += self.cost.memory_gb * service
        self.loop.after(cold_s + service, self._end, (done, token, now))
        return cold_s + service

    def _end(self, arg: tuple[Done, Any, float]) -> None:
        done, token, asked = arg
        now = self.loop.now
        self.inflight -= 1
        self._last_done = now
        if not self.shared and self.inflight >= self.provisioned:
            self.warm.append(now)
        done(token, now - asked, self._failure())


class AsyncEndpoint(Modelled):
    """A SageMaker Async Inference endpoint: its own queue, ``per_instance`` calls per instance, up to
    ``max_instances``; it scales to zero after ``idle_s`` without work and back up from zero in ``startup_s``."""

    def __init__(self, name: str, loop: EventLoop, rng: random.Random, service: ServiceTime,
                 cost: BackendCost | None, max_instances: int, per_instance: int, idle_s: float, startup_s: float,
                 fail_rate: float = 0.0) -> None:
        super().__init__(name, loop, rng, service, cost, fail_rate)
        self.max_instances = max(1, max_instances)
        self.per_instance = per_instance
        self.idle_s = idle_s
        self.startup_s = startup_s
        self.instances = 0
        self._starting = 0
        self.waiting: deque[tuple[float, Done, Any, float]] = deque()
        self.meter = InstanceMeter(0)
        self._idle_since = 0.0
        self.scale_ups = 0

    def capacity(self) -> int:
        return self.max_instances * self.per_instance

    def call(self, extra_s: float, done: Done, token: Any, service_s: float | None = None,
             cold_total_s: float | None = None) -> float | None:
        self.calls += 1
        now = self.loop.now
        self.waiting.append(((self.service.sample(self.rng) if service_s is None else service_s) + extra_s, done,
                             token, now))
        self._pump()
        backlog = len(self.waiting)
        fleet = self.instances + self._starting
        if backlog and fleet < self.max_instances and (fleet == 0 or backlog > fleet * self.per_instance):
            self._starting += 1
            self.scale_ups += 1
            self.meter.set(now, self.meter.count + 1)
            if self.instances == 0:
                self.cold_starts += 1
            self.loop.after(self.startup_s, self._ready)
        return None

    def _ready(self, _: Any) -> None:
        self._starting -= 1
        self.instances += 1
        self._pump()

    def _pump(self) -> None:
        now = self.loop.now
        while self.waiting and self.inflight < self.instances * self.per_instance:
            service, done, token, asked = self.waiting.popleft()
            self.inflight += 1
            self.busy_s += service
            self.loop.after(service, self._end, (done, token, asked))
        if not self.waiting and self.inflight == 0:
            self._idle_since = now

    def _end(self, arg: tuple[Done, Any, float]) -> None:
        done, token, asked = arg
        self.inflight -= 1
        self._pump()
        if self.inflight == 0 and not self.waiting:
            self.loop.after(self.idle_s, self._maybe_scale_in, self.loop.now)
        done(token, self.loop.now - asked, self._failure())

    def _maybe_scale_in(self, idle_since: float) -> None:
        if self.inflight == 0 and not self.waiting and self._idle_since <= idle_since and self.instances:
            self.instances = 0
            self.meter.set(self.loop.now, self._starting)

    def fixed_cost(self, span_s: float) -> float:
        return self.cost.instance_time(self.meter.close(span_s)) if self.cost is not None else 0.0

    def slot_seconds(self, span_s: float) -> float:
        return self.meter.close(span_s) * self.per_instance


class BatchTransform(Modelled):
    """SageMaker Batch Transform: each call is one job of ``instances`` instances: start-up, then its
    records spread over the instances; billed for the instances over the whole job."""

    def __init__(self, name: str, loop: EventLoop, rng: random.Random, service: ServiceTime,
                 cost: BackendCost | None, instances: int, startup_s: float, fail_rate: float = 0.0) -> None:
        super().__init__(name, loop, rng, service, cost, fail_rate)
        self.instances = max(1, instances)
        self.startup_s = startup_s
        self.jobs = 0
        self.instance_seconds = 0.0

    def capacity(self) -> int:
        return self.instances

    def call(self, extra_s: float, done: Done, token: Any, service_s: float | None = None,
             cold_total_s: float | None = None) -> float | None:
        self.calls += 1
        self.jobs += 1
        self.inflight += 1
        seconds = self.startup_s + self.service.sample(self.rng) + extra_s / self.instances
        self.busy_s += seconds * self.instances
        self.instance_seconds += seconds * self.instances
        if self.cost is not None:
            self.call_cost += self.cost.transform_job(seconds, self.instances)
        self.loop.after(seconds, self._end, (done, token, self.loop.now))
        return seconds

    def _end(self, arg: tuple[Done, Any, float]) -> None:
        done, token, asked = arg
        self.inflight -= 1
        done(token, self.loop.now - asked, self._failure())

    def fixed_cost(self, span_s: float) -> float:
        return 0.0
