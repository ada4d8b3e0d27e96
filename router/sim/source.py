"""Where a simulation's requests come from: a recorded trace (the access log) or a synthetic pattern.

A source can be read many times (once per config, once more to learn service times), always the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from router.config import RouterConfig
from router.features import ANONYMOUS
from router.sim.backends import ServiceTime
from router.sim.fit import fit_service_times
from router.sim.synthetic import Mix, synthetic
from router.sim.trace import TraceRequest, TraceStats, read_trace


def mix_for(cfg: RouterConfig) -> Mix:
    """Synthetic requests that fit a config: its models, its tenants, its urgency levels (the default level
    most of the time, the most urgent rarely)."""
    levels = sorted(cfg.urgency.levels.items(), key=lambda kv: -kv[1])
    default = cfg.urgency.default
    others = [name for name, _ in levels if name != default]
    shares = {default: 0.6}
    if others:
        shares[others[0]] = 0.05
        rest = others[1:]
        for name in rest:
            shares[name] = 0.35 / len(rest)
        if not rest:
            shares[default] = 0.95
    tenants = [*dict.fromkeys(c.tenant for c in cfg.callers), ANONYMOUS]
    return Mix(models=list(cfg.models), tenants=tenants, urgencies=[(n, shares[n]) for n, _ in levels])


@dataclass(frozen=True)
class Source:
    """A trace file, or a synthetic pattern (``kind``, ``rps``, ``duration_s``, ``seed``) for ``mix``."""

    trace: str | None = None
    kind: str | None = None
    rps: float = 0.0
    duration_s: float = 0.0
    seed: int = 1
    mix: Mix | None = None

    def requests(self, stats: TraceStats | None = None) -> Iterator[TraceRequest]:
        if self.trace is not None:
            return read_trace(self.trace, stats)
        assert self.kind is not None
        assert self.mix is not None
        return synthetic(self.kind, self.rps, self.duration_s, self.mix, self.seed)

    @property
    def expected(self) -> float:
        """About how many requests (for the progress bar): rps x duration, or the file's size / 250 bytes."""
        if self.trace is not None:
            return os.path.getsize(self.trace) / 250.0 if Path(self.trace).is_file() else 0.0
        return self.rps * self.duration_s

    def fitted(self) -> dict[str, ServiceTime]:
        """Service times learned from a recorded trace (nothing from a synthetic one)."""
        return fit_service_times(self.requests()) if self.trace is not None else {}

    def describe(self) -> str:
        if self.trace is not None:
            return f"trace {self.trace}"
        return f"synthetic {self.kind}, {self.rps:g} req/s for {self.duration_s:g} s, seed {self.seed}"
