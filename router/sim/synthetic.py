"""Synthetic traces: arrival patterns (steady, diurnal, spiky, sporadic) with a mix of sizes, urgencies,
deadlines and ``Prefer``, seeded so a run can be repeated exactly.

Arrivals are a Poisson process whose rate follows the pattern (thinning); the mean rate is ``rps`` for
every kind:

- ``steady``: ``rps`` all along.
- ``diurnal``: a day's wave (0.2x at night, 1.8x at the afternoon peak) squeezed into the run when it is
  shorter than a day.
- ``spiky``: 0.44x, with a spike at 6x a tenth of the time: 3 s every 30 s (in runs shorter than a minute,
  two spikes: one every half of the run).
- ``sporadic``: clusters of about 5 requests within a second, the clusters themselves rare (``rps`` / 5 per
  second): long idle gaps, where serverless backends go cold and async ones scale to zero.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from router.sim.trace import TraceRequest

KINDS = ("steady", "diurnal", "spiky", "sporadic")
SPIKE_EVERY_S = 30.0
SPIKE_FOR_S = 3.0
SPIKE_X = 6.0
_BASE_X = (1.0 - SPIKE_X * SPIKE_FOR_S / SPIKE_EVERY_S) / (1.0 - SPIKE_FOR_S / SPIKE_EVERY_S)


@dataclass(frozen=True, slots=True)
class Mix:
    """What the requests look like. Shares are probabilities; sizes are lognormal around their medians."""

    models: Sequence[str]
    tenants: Sequence[str] = ("anonymous",)
    urgencies: Sequence[tuple[str, float]] = (("critical", 0.05), ("high", 0.15), ("normal", 0.6), ("low", 0.2))
    large_share: float = 0.02  # over 6 MB: only a job lane takes them, so these clients accept a 202
    medium_share: float = 0.1  # around 200 KB
    small_bytes: int = 1_000  # median of the rest
    deadline_share: float = 0.25  # with X-Deadline-Ms, lognormal around 300 ms
    async_share: float = 0.25  # Prefer: respond-async (more likely for low urgency)
    csv_share: float = 0.7  # text/csv, else application/json


def _rate(kind: str, rps: float, duration_s: float) -> tuple[Callable[[float], float], float]:
    """The rate at time t, and its maximum (for thinning)."""
    if kind == "steady":
        return (lambda t: rps), rps
    if kind == "diurnal":
        period = min(duration_s, 86400.0) or 86400.0
        return (lambda t: rps * (1.0 - 0.8 * math.cos(2.0 * math.pi * t / period))), 1.8 * rps
    if kind == "spiky":
        every = min(SPIKE_EVERY_S, duration_s / 2.0)
        spike = every * SPIKE_FOR_S / SPIKE_EVERY_S

        def spiky(t: float) -> float:
            return rps * (SPIKE_X if t % every >= every - spike else _BASE_X)
        return spiky, SPIKE_X * rps
    raise ValueError(f"unknown synthetic kind {kind!r} (known: {', '.join(KINDS)})")


def _arrivals(kind: str, rps: float, duration_s: float, rng: random.Random) -> Iterator[float]:
    if kind == "sporadic":
        t = 0.0
        while True:
            t += rng.expovariate(rps / 5.0)
            if t >= duration_s:
                return
            size = 1 + int(math.log(1.0 - rng.random()) / math.log(0.8))  # geometric, mean 5
            offsets = sorted(rng.random() for _ in range(size))
            for off in offsets:
                if t + off < duration_s:
                    yield t + off
            t += 1.0
    rate, peak = _rate(kind, rps, duration_s)
    t = 0.0
    expo = rng.expovariate
    uniform = rng.random
    while True:
        t += expo(peak)
        if t >= duration_s:
            return
        if uniform() * peak <= rate(t):
            yield t


def synthetic(kind: str, rps: float, duration_s: float, mix: Mix, seed: int = 1) -> Iterator[TraceRequest]:
    """A seeded synthetic trace of about ``rps`` x ``duration_s`` requests."""
    if rps <= 0 or duration_s <= 0:
        raise ValueError("rps and duration must be positive")
    if kind not in KINDS:
        raise ValueError(f"unknown synthetic kind {kind!r} (known: {', '.join(KINDS)})")
    rng = random.Random(seed)
    names = [u for u, _ in mix.urgencies]
    weights = [w for _, w in mix.urgencies]
    models, tenants = list(mix.models), list(mix.tenants)
    for t in _arrivals(kind, rps, duration_s, rng):
        roll = rng.random()
        if roll < mix.large_share:
            size = int(rng.lognormvariate(math.log(20e6), 0.5))
        elif roll < mix.large_share + mix.medium_share:
            size = int(rng.lognormvariate(math.log(200e3), 0.8))
        else:
            size = max(16, int(rng.lognormvariate(math.log(mix.small_bytes), 0.6)))
        urgency = rng.choices(names, weights)[0]
        low = urgency == names[-1]
        accepts = size > 6_000_000 or rng.random() < (mix.async_share * (2.0 if low else 0.75))
        deadline = None
        if rng.random() < mix.deadline_share:
            deadline = max(20, min(10_000, int(rng.lognormvariate(math.log(300.0), 0.8))))
        yield TraceRequest(
            t, models[0] if len(models) == 1 else rng.choice(models),
            tenants[0] if len(tenants) == 1 else rng.choice(tenants), size,
            "text/csv" if rng.random() < mix.csv_share else "application/json",
            urgency, deadline, accepts)
