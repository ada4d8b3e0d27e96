"""Concurrency limits: how many calls one backend may have in flight, as small pure objects fed samples.

Each algorithm is told about every finished call (``on_sample``: when, round-trip time, calls in flight,
outcome) and exposes ``limit`` (a float; the tracker admits ``int(limit)`` calls, at least one). Time is
always passed in, never read, so the simulator drives the same code on a virtual clock.

- ``FixedLimit``: the configured integer, halved on throttling at most once per service time and grown back
  by +1 per window of successes (+1/limit per success), never above the configured number (AIMD).
- ``GradientLimit``: learns the limit. Like Envoy's gradient controller it compares each window's median
  round-trip time with the lowest window median seen (``gradient = (tolerance * min_rtt + jitter) /
  window_rtt``, clamped to 0.5..2) and moves the limit towards ``limit * gradient + headroom``; like
  Netflix's AIMD it cuts multiplicatively on throttling. Growth and cuts are multiplicative (the small
  headroom only pulls replicas towards equal shares), so the equilibrium is a latency ratio and a
  throttling point that are the same for every replica: N routers in front of one backend converge to
  about 1/N of it each without talking to each other (Envoy's sqrt(limit) headroom would add up across
  replicas). After a throttle the limit may only regrow slowly (``probe`` of the level it was cut to,
  plus ``probe_slots``, per second), so a backend that refuses instead of queueing (no latency signal) is
  overshot rarely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

LATENCY_ALPHA = 0.2  # the smoothing of the service-time estimate that spaces throttling cuts


class Outcome(StrEnum):
    """What a finished call says about load."""

    SUCCESS = "success"  # answered: its round-trip time is a latency sample
    THROTTLED = "throttled"  # 429 / ThrottlingException: over the backend's capacity
    DROPPED = "dropped"  # timed out: overloaded as far as the adaptive limit can tell
    IGNORED = "ignored"  # failed for another reason (down, broken, bad input): says nothing about load


_SUCCESS, _THROTTLED, _DROPPED = Outcome.SUCCESS, Outcome.THROTTLED, Outcome.DROPPED  # enum reads cost in 3.11


class ConcurrencyLimit(Protocol):
    """One backend's concurrency limit. ``limit`` >= 1; the tracker admits ``int(limit)`` calls at once."""

    @property
    def limit(self) -> float: ...

    @property
    def ceiling(self) -> int: ...  # the most it can ever be (the configured maximum)

    def on_sample(self, now: float, rtt_s: float, inflight: int, outcome: Outcome) -> None:
        """A call ended at ``now`` after ``rtt_s``; ``inflight`` calls (this one included) were in flight."""

    def on_queue_report(self, now: float, waiting: float) -> None:
        """The backend said ``waiting`` requests wait in its own queue (ORCA ``num_requests_waiting``)."""


class FixedLimit:
    """A configured ``max_concurrency: <int>``: AIMD below it, never above.

    Throttling halves the limit, at most once per service time (one overload, one decrease); each success
    adds 1/limit, so a full window of successes regrows it by 1.
    """

    __slots__ = ("_last_cut", "_service_s", "ceiling", "limit")

    def __init__(self, maximum: int) -> None:
        self.ceiling = maximum
        self.limit = float(maximum)
        self._service_s = 0.0
        self._last_cut = -math.inf

    def on_sample(self, now: float, rtt_s: float, inflight: int, outcome: Outcome) -> None:
        if outcome is _SUCCESS:
            self._service_s = rtt_s if self._service_s == 0.0 else (
                self._service_s + LATENCY_ALPHA * (rtt_s - self._service_s))
            limit = self.limit
            if limit < self.ceiling:
                self.limit = min(float(self.ceiling), limit + 1.0 / limit)
        elif outcome is _THROTTLED and now - self._last_cut >= max(self._service_s, 0.05):
            self.limit = max(1.0, self.limit / 2.0)
            self._last_cut = now

    def on_queue_report(self, now: float, waiting: float) -> None:
        return None  # a fixed limit is what the operator said; queue reports only feed saturation

    def resize(self, maximum: int) -> None:
        self.ceiling = maximum
        self.limit = min(self.limit, float(maximum))


@dataclass(frozen=True, slots=True)
class GradientSettings:
    """``max_concurrency: auto`` or ``{initial, min, max}``; the rest are tuning knobs with sane defaults."""

    initial: int = 4  # where a new backend starts: low, it grows by up to x1.1 per window
    min: int = 1
    max: int = 1000
    tolerance: float = 1.2  # window median RTT / min RTT at which the limit holds steady...
    jitter_s: float = 0.002  # ...plus this much, so scheduling noise on a fast backend is not queueing
    smoothing: float = 0.2  # share of the gradient's target applied per window
    backoff: float = 0.9  # multiply by this on throttling (and lose at least one slot)
    headroom: float = 0.5  # slots added per window on top of the gradient: pulls replicas to equal shares
    probe: float = 0.05  # after a cut, regrow at most this share of the cut level per second...
    probe_slots: float = 0.5  # ...plus this many slots per second
    window_samples: int = 5  # a window closes after this many successes...
    window_min_s: float = 0.1  # ...and at least this long and one smoothed RTT (same pace for every replica)


class GradientLimit:
    """``max_concurrency: auto``: the limit learned from latency, cut on throttling. See the module doc."""

    __slots__ = (
        "_at_min_windows",
        "_cut_at",
        "_cut_level",
        "_inflight_peak",
        "_last_cut",
        "_rtts",
        "_srtt",
        "_waiting",
        "_waiting_reports",
        "_window_start",
        "limit",
        "min_rtt",
        "settings",
    )

    def __init__(self, settings: GradientSettings, now: float = 0.0) -> None:
        self.settings = settings
        self.limit = float(min(max(settings.initial, settings.min), settings.max))
        self.min_rtt = math.inf
        self._srtt = 0.0
        self._rtts: list[float] = []
        self._inflight_peak = 0
        self._waiting = 0.0
        self._waiting_reports = 0
        self._window_start = now
        self._last_cut = -math.inf
        self._cut_at = -math.inf  # when the last throttling cut happened, and the level it cut to
        self._cut_level = math.inf
        self._at_min_windows = 0

    @property
    def ceiling(self) -> int:
        return self.settings.max

    def on_sample(self, now: float, rtt_s: float, inflight: int, outcome: Outcome) -> None:
        if outcome is _THROTTLED or outcome is _DROPPED:
            self._cut(now)
            return
        if outcome is not _SUCCESS:
            return
        self._srtt = rtt_s if self._srtt == 0.0 else self._srtt + LATENCY_ALPHA * (rtt_s - self._srtt)
        self._rtts.append(rtt_s)
        if inflight > self._inflight_peak:
            self._inflight_peak = inflight
        s = self.settings
        if len(self._rtts) >= s.window_samples and now - self._window_start >= max(s.window_min_s, self._srtt):
            self._update(now)

    def on_queue_report(self, now: float, waiting: float) -> None:
        self._waiting += waiting
        self._waiting_reports += 1

    def allowed(self, now: float) -> float:
        """The most the limit may grow to at ``now``: the cut level plus ``probe`` of it per second since."""
        if self._cut_at == -math.inf:
            return float(self.settings.max)
        s, elapsed = self.settings, now - self._cut_at
        return self._cut_level * (1.0 + s.probe * elapsed) + s.probe_slots * elapsed

    def _cut(self, now: float) -> None:
        # One cut per round trip: the other calls of the same overload were already in flight.
        if now - self._last_cut < max(self._srtt, self.settings.window_min_s):
            return
        s = self.settings
        capacity = max(1, int(self.limit))
        # Always lose at least one admitted call: 0.9 x 4 is still 3.6 -> 3, not 4 again.
        self.limit = max(float(s.min), min(capacity * s.backoff, capacity - 1.0))
        self._last_cut = self._cut_at = now
        self._cut_level = self.limit
        self._reset_window(now)

    def _update(self, now: float) -> None:
        s = self.settings
        rtts = sorted(self._rtts)
        window_rtt = rtts[len(rtts) // 2]
        # The baseline is the lowest window median, not the lowest sample: one lucky call is not the norm.
        self.min_rtt = min(self.min_rtt, window_rtt)
        gradient = max(0.5, min(2.0, (s.tolerance * self.min_rtt + s.jitter_s) / window_rtt))
        if self._waiting_reports and (waiting := self._waiting / self._waiting_reports) >= 1.0:
            # The backend says requests wait in its queue: shrink as if they were this router's.
            gradient = min(gradient, self.limit / (self.limit + waiting))
        headroom = s.headroom
        if gradient >= 1.0 and self._inflight_peak < self.limit / 2:
            gradient, headroom = 1.0, 0.0  # not using half of it: latency says nothing about a higher limit
        new = self.limit + s.smoothing * (self.limit * gradient + headroom - self.limit)
        new = min(new, self.allowed(now))
        self.limit = max(float(s.min), min(float(s.max), new))
        if gradient < 1.0 and int(self.limit) <= s.min:  # it would go lower still: held down by the floor
            self._at_min_windows += 1
            if self._at_min_windows >= 5:
                # Held at the floor for 5 windows: the backend got slower for good; learn its new latency.
                self.min_rtt = window_rtt
                self._at_min_windows = 0
        else:
            self._at_min_windows = 0
        self._reset_window(now)

    def _reset_window(self, now: float) -> None:
        self._rtts.clear()
        self._inflight_peak = 0
        self._waiting = 0.0
        self._waiting_reports = 0
        self._window_start = now

    def resize(self, settings: GradientSettings) -> None:
        self.settings = settings
        self.limit = max(float(settings.min), min(float(settings.max), self.limit))
