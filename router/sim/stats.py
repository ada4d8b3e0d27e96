"""Fixed-size statistics, so a simulation's memory does not grow with its trace: latency histograms with
1% resolution, and time series whose buckets widen as the run grows."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

MIN_S = 1e-5  # 10 µs: anything faster lands in the first bucket
_PER_E = 100  # buckets per factor e: about 1% wide
_SIZE = int(math.log(1e6 / MIN_S) * _PER_E) + 1  # up to 11.6 days


class LatencyHistogram:
    """Durations in buckets 1% wide from 10 µs to 11 days; percentiles accurate to about 1%."""

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * _SIZE
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        i = int(math.log(seconds / MIN_S) * _PER_E) if seconds > MIN_S else 0
        self.counts[i if i < _SIZE else _SIZE - 1] += 1
        self.count += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    @staticmethod
    def _value(i: int) -> float:
        return MIN_S * math.exp((i + 0.5) / _PER_E)

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (0..100), or None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self._value(i), self.max)
        return self.max

    def buckets(self) -> Iterator[tuple[float, int]]:
        """(seconds, count) of every non-empty bucket, fastest first."""
        for i, n in enumerate(self.counts):
            if n:
                yield min(self._value(i), self.max), n

    def cdf(self) -> Iterator[tuple[float, float]]:
        """(seconds, share at or below) for every non-empty bucket."""
        seen = 0
        for i, n in enumerate(self.counts):
            if n:
                seen += n
                yield min(self._value(i), self.max), seen / self.count

    def merge(self, other: LatencyHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)


class TimeSeries:
    """Per-bucket sums and maxima over the run, at most ``limit`` buckets: when the run outgrows them, pairs
    of buckets merge and the width doubles. ``sums`` and ``maxes`` name the columns."""

    __slots__ = ("_cols", "_maxes", "buckets", "limit", "maxes", "sums", "width")

    def __init__(self, sums: Sequence[str], maxes: Sequence[str], width_s: float = 1.0, limit: int = 512) -> None:
        self.sums = tuple(sums)
        self.maxes = tuple(maxes)
        self._cols = len(self.sums) + len(self.maxes)
        self._maxes = len(self.sums)
        self.width = width_s
        self.limit = limit
        self.buckets: list[list[float]] = []

    def _bucket(self, t: float) -> list[float]:
        i = int(t / self.width)
        while i >= self.limit:
            self._halve()
            i = int(t / self.width)
        buckets = self.buckets
        while len(buckets) <= i:
            buckets.append([0.0] * self._cols)
        return buckets[i]

    def add(self, t: float, col: int, value: float = 1.0) -> None:
        self._bucket(t)[col] += value

    def peak(self, t: float, col: int, value: float) -> None:
        b = self._bucket(t)
        j = self._maxes + col
        if value > b[j]:
            b[j] = value

    def _halve(self) -> None:
        merged = []
        m = self._maxes
        for k in range(0, len(self.buckets), 2):
            pair = self.buckets[k:k + 2]
            row = [sum(r[j] for r in pair) for j in range(m)] + [max(r[j] for r in pair) for j in range(m, self._cols)]
            merged.append(row)
        self.buckets = merged
        self.width *= 2.0

    def column(self, name: str) -> list[float]:
        j = self.sums.index(name) if name in self.sums else self._maxes + self.maxes.index(name)
        return [b[j] for b in self.buckets]

    def times(self) -> list[float]:
        return [i * self.width for i in range(len(self.buckets))]
