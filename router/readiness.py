"""Readiness: whether this replica can serve, and why not. :func:`readiness` is the one place that decides
``GET /readyz``; every signal (start-up, draining, backends that cannot work) feeds it.

What "ready" means: the router is started and not draining, every backend of the config was built, and every
model can be served by at least one backend of its lanes. A backend that cannot work (no AWS credentials,
an unknown or failed SageMaker endpoint, a refused connection) makes the answer ``degraded`` while each model
still has another backend that works (a model with a fallback still serves), and ``not_ready`` (503) once a
model has none left: that replica then serves nothing of that model, and a new replica would not either.

:class:`BackendChecks` probes the backends (:mod:`router.backends.probes`) at start, after a reload, and in the
background: an unusable backend again after 1 s (doubling up to 30 s), so readiness recovers once it works; a
usable one every minute (credentials expire, endpoints get deleted). Each change is logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from router.backends.probes import ProbeResult, probe
from router.config import BackendConfig, SageMakerBatchBackendConfig

if TYPE_CHECKING:
    from router.backends import Connections
    from router.runtime import Runtime

log = structlog.get_logger("router.readiness")

Clock = Callable[[], float]
_UNFINISHED = ProbeResult(True, "not verified: the check did not finish in time")


class BackendChecks:
    """The latest probe result per backend, kept fresh in the background (see the module docstring)."""

    def __init__(self, connections: Connections, *, timeout_s: float = 8.0, retry_s: float = 1.0,
                 max_retry_s: float = 30.0, recheck_s: float = 60.0, clock: Clock = time.monotonic) -> None:
        self._connections = connections
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._recheck_s = recheck_s
        self._clock = clock
        self._configs: dict[str, BackendConfig] = {}
        self._due: dict[str, float] = {}
        self._delay: dict[str, float] = {}
        self.results: dict[str, ProbeResult] = {}
        self._task: asyncio.Task[None] | None = None

    def unusable(self) -> dict[str, str]:
        """Backends that cannot work, with why."""
        return {name: r.detail or "unusable" for name, r in sorted(self.results.items()) if not r.usable}

    def unverified(self) -> dict[str, str]:
        return {name: r.detail for name, r in sorted(self.results.items()) if r.usable and r.detail}

    async def update(self, backends: Mapping[str, BackendConfig]) -> None:
        """Follow a config: forget removed backends, probe new or changed ones now (bounded by the timeout)."""
        for name in set(self._configs) - set(backends):
            for table in (self._configs, self._due, self._delay, self.results):
                table.pop(name, None)
        changed = [name for name, cfg in backends.items() if self._configs.get(name) != cfg]
        for name in changed:
            self._configs[name] = backends[name]
            self._delay.pop(name, None)
        await self._probe(changed)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="backend-checks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            now = self._clock()
            await self._probe([name for name, due in self._due.items() if due <= now])
            wait = min((due - self._clock() for due in self._due.values()), default=self._recheck_s)
            await asyncio.sleep(min(max(wait, 0.05), 1.0))

    async def _probe(self, names: list[str]) -> None:
        if not names:
            return
        tasks = {name: asyncio.create_task(probe(self._configs[name], self._connections)) for name in names}
        done, pending = await asyncio.wait(tasks.values(), timeout=self._timeout_s)
        for task in pending:
            task.cancel()
        for name, task in tasks.items():
            if name not in self._configs:
                continue  # removed by a reload meanwhile
            if task in done and task.exception() is None:
                self._record(name, task.result())
            elif task in done:
                exc = task.exception()
                self._record(name, ProbeResult(True, f"not verified: the check failed ({type(exc).__name__})"))
            else:
                self._record(name, _UNFINISHED)

    def _record(self, name: str, result: ProbeResult) -> None:
        old = self.results.get(name)
        self.results[name] = result
        if not result.usable:
            if old is None or old.usable or old.detail != result.detail:
                log.error("backend_unusable", backend=name, reason=result.detail)
            delay = self._retry_s if old is None or old.usable else min(self._max_retry_s, self._delay[name] * 2)
        else:
            if old is not None and not old.usable:
                log.info("backend_usable_again", backend=name)
            elif result.detail and (old is None or old.detail != result.detail):
                log.warning("backend_not_verified", backend=name, reason=result.detail)
            delay = self._retry_s if result is _UNFINISHED else self._recheck_s
        self._delay[name] = delay
        self._due[name] = self._clock() + delay


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    body: dict[str, Any]


def readiness(runtime: Runtime) -> Readiness:
    """``GET /readyz``'s answer: 200 with ``ready`` or ``degraded``, 503 with ``not_ready`` and the reasons."""
    routing = runtime.routing
    backends = routing.config.backends
    per_request = {n for n, b in backends.items() if not isinstance(b, SageMakerBatchBackendConfig)}
    missing = sorted(per_request - set(routing.targets))
    unusable = {n: why for n, why in runtime.backend_checks.unusable().items() if n in backends}
    down = sorted(name for name, entry in routing.models.items()
                  if set(entry.routes.lanes.values()) <= set(unusable))
    reasons = []
    if not runtime.started:
        reasons.append("starting")
    if runtime.draining:
        reasons.append("draining: the router is shutting down")
    if missing:
        reasons.append(f"backends not built: {', '.join(missing)}")
    reasons += [f"model {m!r} has no backend that can work" for m in down]
    lanes = job_lanes(runtime)
    reasons += [f"job lane {lane!r} cannot make progress: its storage has failed for {report['failing_for_s']} s"
                for lane, report in lanes.items() if report["stalled"]]
    status = "not_ready" if reasons else "degraded" if unusable else "ready"
    body = {"status": status, "reasons": reasons, "draining": runtime.draining, "models": sorted(routing.models),
            "models_down": down, "backends_missing": missing, "backends_unusable": unusable,
            "backends_unverified": {n: why for n, why in runtime.backend_checks.unverified().items() if n in backends},
            "job_lanes": lanes}
    return Readiness(not reasons, body)


def job_lanes(runtime: Runtime) -> dict[str, dict[str, Any]]:
    """Each job lane's storage health (router.storage.health): a lane whose storage keeps failing is stalled."""
    lanes = {health.lane: health.report() for health in runtime.storage_health()}
    if runtime.job_lane is not None:
        lanes["async"]["workers"] = runtime.job_lane.workers_alive
    return lanes
