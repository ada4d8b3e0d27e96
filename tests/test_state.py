"""The tracker: AIMD capacity, the circuit breaker, warm/cold. Time comes from a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from router.flow.limits import GradientSettings
from router.state import BackendTracker, SaturationTracker, TrackerSettings
from router.types import BreakerState, FailureKind, Lane


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def tracker(clock: Clock, **kw: object) -> BackendTracker:
    settings = TrackerSettings(**{"max_concurrency": 8, "breaker_failures": 3, "breaker_open_s": 5.0, **kw})  # type: ignore[arg-type]
    return BackendTracker("b", settings, clock)


def call(t: BackendTracker, clock: Clock, elapsed: float = 0.01, fail: FailureKind | None = None) -> None:
    t.start(clock.now)
    clock.now += elapsed
    if fail is None:
        t.succeeded(clock.now, elapsed)
    else:
        t.failed(clock.now, fail)


def test_saturation_is_inflight_over_capacity() -> None:
    clock = Clock()
    t = tracker(clock)
    for _ in range(6):
        t.start(clock.now)
    assert t.state(clock.now).saturation == 0.75
    assert t.state(clock.now).available


def test_throttling_halves_capacity_and_successes_grow_it_back() -> None:
    clock = Clock()
    t = tracker(clock)
    call(t, clock, fail=FailureKind.THROTTLED)
    assert t.capacity == 4
    call(t, clock, fail=FailureKind.THROTTLED)  # same service window: one overload, one decrease
    assert t.capacity == 4
    clock.now += 1.0
    call(t, clock, fail=FailureKind.THROTTLED)
    assert t.capacity == 2
    for _ in range(100):
        call(t, clock)
    assert t.capacity == 8  # back to the configured maximum, never above


def test_breaker_opens_after_consecutive_failures_then_lets_one_probe_through() -> None:
    clock = Clock()
    t = tracker(clock)
    for _ in range(3):
        call(t, clock, fail=FailureKind.UNAVAILABLE)
    assert t.state(clock.now).breaker is BreakerState.OPEN
    assert t.state(clock.now).saturation == 1.0
    assert not t.admits(clock.now)
    clock.now += 5.0
    assert t.admits(clock.now)
    assert t.state(clock.now).breaker is BreakerState.HALF_OPEN
    t.start(clock.now)
    assert not t.admits(clock.now)  # one probe at a time
    clock.now += 0.01
    t.succeeded(clock.now, 0.01)
    assert t.state(clock.now).breaker is BreakerState.CLOSED


def test_failed_probe_reopens_the_breaker() -> None:
    clock = Clock()
    t = tracker(clock)
    for _ in range(3):
        call(t, clock, fail=FailureKind.TIMEOUT)
    clock.now += 5.0
    call(t, clock, fail=FailureKind.CONNECTION)
    assert t.state(clock.now).breaker is BreakerState.OPEN


def test_model_errors_do_not_count_against_health() -> None:
    clock = Clock()
    t = tracker(clock)
    for _ in range(10):
        call(t, clock, fail=FailureKind.MODEL_ERROR)
    s = t.state(clock.now)
    assert s.breaker is BreakerState.CLOSED
    assert s.error_rate == 0.0


def test_a_success_between_failures_resets_the_count() -> None:
    clock = Clock()
    t = tracker(clock)
    for _ in range(5):
        call(t, clock, fail=FailureKind.SERVER_ERROR)
        call(t, clock, fail=FailureKind.SERVER_ERROR)
        call(t, clock)
    assert t.state(clock.now).breaker is BreakerState.CLOSED
    assert 0.0 < t.state(clock.now).error_rate < 1.0


def test_serverless_is_cold_when_idle_and_learns_its_cold_start() -> None:
    clock = Clock()
    t = tracker(clock, serverless=True, idle_after_s=30.0, cold_start_s=5.0)
    assert t.state(clock.now).cold  # never used
    call(t, clock, elapsed=1.0)  # first call, cold: nothing to compare with yet
    for _ in range(10):
        call(t, clock, elapsed=0.1)
    assert not t.state(clock.now).cold
    assert abs(t.state(clock.now).latency_s - 0.1) < 0.01
    clock.now += 31.0
    assert t.state(clock.now).cold
    assert t.state(clock.now).expected_latency_s > 5.0
    call(t, clock, elapsed=2.1)  # observed: 2 s of cold start
    assert 2.0 < t.cold_start_s < 5.0  # learned: moved from the configured 5 s towards the 2 s observed
    assert t.state(clock.now).latency_s < 0.2  # the cold call does not pollute the warm latency


def test_calls_that_share_a_cold_start_do_not_count_as_warm_latency() -> None:
    clock = Clock()
    t = tracker(clock, serverless=True, idle_after_s=30.0, cold_start_s=5.0)
    for _ in range(5):
        call(t, clock, elapsed=0.1)
    clock.now += 31.0
    first_at = clock.now
    t.start(first_at)  # cold: the backend starts up
    clock.now += 0.5
    second_at = clock.now
    t.start(second_at)  # arrives during the start-up: waits for the same cold start
    clock.now = first_at + 2.1
    t.succeeded(clock.now, clock.now - first_at)
    clock.now += 0.01
    t.succeeded(clock.now, clock.now - second_at)
    assert t.state(clock.now).latency_s == pytest.approx(0.1)  # neither 2.1 s nor 1.6 s is a warm latency
    assert t.cold_start_s == pytest.approx(5.0 + 0.5 * (2.0 - 5.0))  # learned once, from the first to answer
    call(t, clock, elapsed=0.3)  # after the start-up, calls are warm again
    assert t.state(clock.now).latency_s == pytest.approx(0.1 + 0.2 * (0.3 - 0.1))


def test_not_ready_marks_a_serverless_backend_cold() -> None:
    clock = Clock()
    t = tracker(clock, serverless=True, idle_after_s=30.0, cold_start_s=5.0)
    call(t, clock)
    assert not t.state(clock.now).cold
    call(t, clock, fail=FailureKind.NOT_READY)
    assert t.state(clock.now).cold


def test_reload_keeps_live_numbers_and_applies_new_limits() -> None:
    clock = Clock()
    tracked = SaturationTracker(clock)
    t = tracked.track("b", TrackerSettings(max_concurrency=8))
    t.start(clock.now)
    again = tracked.track("b", TrackerSettings(max_concurrency=2))
    assert again is t
    assert (again.inflight, again.capacity) == (1, 2)
    snap = tracked.snapshot({Lane.REALTIME: "b"}, {})
    assert snap.lane(Lane.REALTIME) is not None
    assert snap.lane(Lane.REALTIME).saturation == 0.5  # type: ignore[union-attr]
    assert snap.lane(Lane.SERVERLESS) is None


def test_latency_ewma_moves_a_fifth_of_the_way_to_each_sample() -> None:
    clock = Clock()
    t = tracker(clock)
    call(t, clock, elapsed=0.1)
    assert t.latency_s == 0.1  # the first sample is taken as it is
    call(t, clock, elapsed=0.2)
    assert t.latency_s == pytest.approx(0.12)
    call(t, clock, elapsed=0.2)
    assert t.latency_s == pytest.approx(0.136)


def test_error_rate_ewma_rises_a_tenth_per_failure_and_decays_a_tenth_per_success() -> None:
    clock = Clock()
    t = tracker(clock, breaker_failures=100)
    call(t, clock, fail=FailureKind.SERVER_ERROR)
    assert t.error_rate == pytest.approx(0.1)
    call(t, clock, fail=FailureKind.TIMEOUT)
    assert t.error_rate == pytest.approx(0.19)
    call(t, clock)
    assert t.error_rate == pytest.approx(0.171)
    call(t, clock)
    assert t.error_rate == pytest.approx(0.1539)


def test_auto_limit_starts_at_initial_and_capacity_shows_the_learned_limit() -> None:
    clock = Clock()
    t = tracker(clock, max_concurrency=50, adaptive=GradientSettings(initial=3, max=50))
    assert (t.capacity, t.state(clock.now).max_capacity) == (3, 50)
    for _ in range(500):  # 3 calls at a time, flat 20 ms: the limit grows
        for _ in range(t.capacity):
            t.start(clock.now)
        clock.now += 0.02
        for _ in range(t.inflight):
            t.succeeded(clock.now, 0.02)
    assert t.capacity == 50
    assert t.state(clock.now).capacity == 50


def test_a_fresh_orca_report_raises_saturation_and_a_stale_or_malformed_one_does_not() -> None:
    clock = Clock()
    t = tracker(clock)
    t.start(clock.now)
    t.succeeded(clock.now, 0.01, "TEXT application_utilization=0.9")
    assert t.state(clock.now).saturation == 0.9  # nothing in flight: the backend's own word
    assert t.state(clock.now).reported_utilization == 0.9
    t.start(clock.now)
    t.succeeded(clock.now, 0.01, "not a report")
    assert t.state(clock.now).saturation == 0.9  # the last good report still holds
    clock.now += 10.5
    assert t.state(clock.now).saturation == 0.0
    assert t.state(clock.now).reported_utilization is None


def test_waiting_requests_reported_by_the_backend_shrink_an_auto_limit() -> None:
    clock = Clock()
    t = tracker(clock, max_concurrency=100, adaptive=GradientSettings(initial=20, max=100))
    for _ in range(50):
        for _ in range(t.capacity):
            t.start(clock.now)
        clock.now += 0.02
        for _ in range(t.inflight):
            t.succeeded(clock.now, 0.02, "TEXT named_metrics.num_requests_waiting=8")
    assert t.capacity < 20


def test_a_reload_from_fixed_to_auto_starts_learning_and_wakes_waiters_when_the_limit_grows() -> None:
    clock = Clock()
    tracked = SaturationTracker(clock)
    t = tracked.track("b", TrackerSettings(max_concurrency=2))
    woken: list[int] = []
    t.on_free = lambda: woken.append(t.capacity)
    tracked.track("b", TrackerSettings(max_concurrency=100, adaptive=GradientSettings(initial=10, max=100)))
    assert t.capacity == 10
    assert woken == [10]
    for _ in range(10):  # the new limit learns from the calls that follow, in windows from the reload on
        call(t, clock, elapsed=0.05)
    assert t.capacity >= 10


def test_a_snapshot_shows_each_backend_of_the_models_lanes_once_as_of_now() -> None:
    clock = Clock()
    tracked = SaturationTracker(clock)
    tracked.track("a", TrackerSettings(max_concurrency=4, serverless=True, cold_start_s=2.0))
    tracked.track("other", TrackerSettings(max_concurrency=4))
    snap = tracked.snapshot({Lane.REALTIME: "a", Lane.SERVERLESS: "a"}, {Lane.REALTIME: 1000})
    assert list(snap.backends) == ["a"]
    state = snap.backends["a"]
    assert (state.name, state.serverless, state.cold, state.cold_start_s) == ("a", True, True, 2.0)
    assert snap.limits == {Lane.REALTIME: 1000}
    assert snap.taken_at == clock.now
    tracked.retain(["a"])
    assert list(tracked.trackers) == ["a"]


def test_a_serverless_backend_turns_cold_only_after_more_than_its_idle_window() -> None:
    clock = Clock()
    t = tracker(clock, serverless=True, idle_after_s=600.0)
    call(t, clock)
    assert not t.cold(clock.now + 600.0)
    assert t.cold(clock.now + 600.5)


@pytest.mark.parametrize("end", ["model_error", "unavailable", "abandoned"])
def test_a_call_that_fails_or_is_abandoned_still_keeps_a_serverless_backend_warm(end: str) -> None:
    clock = Clock()
    t = tracker(clock, serverless=True, idle_after_s=600.0, breaker_failures=10)
    t.start(clock.now)
    clock.now += 700.0  # a long call: its end, not its start, is the last activity
    if end == "abandoned":
        t.abandoned(clock.now)
    else:
        t.failed(clock.now, FailureKind(end))
    assert not t.state(clock.now + 1.0).cold


def test_an_orca_report_counts_for_exactly_ten_seconds_and_saturation_stays_at_most_one() -> None:
    clock = Clock()
    t = tracker(clock)
    t.start(clock.now)
    t.succeeded(clock.now, 0.01, "TEXT application_utilization=1.5")
    assert t.state(clock.now).saturation == 1.0
    assert t.state(clock.now + 10.0).reported_utilization == 1.5
    assert t.state(clock.now + 10.5).reported_utilization is None


def test_half_open_a_backend_is_saturated_only_while_its_probe_is_under_way() -> None:
    clock = Clock()
    t = tracker(clock)
    for _ in range(3):
        call(t, clock, fail=FailureKind.UNAVAILABLE)
    assert t.state(clock.now).saturation == 1.0  # open
    clock.now += 5.0
    assert t.state(clock.now).breaker is BreakerState.HALF_OPEN
    assert t.state(clock.now).saturation == 0.0  # a probe may go
    t.start(clock.now)
    assert t.state(clock.now).saturation == 1.0  # the probe is out: nothing else goes


def test_a_cold_call_quicker_than_a_warm_one_teaches_a_shorter_cold_start() -> None:
    clock = Clock()
    t = tracker(clock, serverless=True, cold_start_s=2.0, idle_after_s=60.0)
    t.start(clock.now)  # cold: its own latency says nothing yet
    clock.now += 2.5
    t.succeeded(clock.now, 2.5)
    call(t, clock, elapsed=0.5)  # warm: 0.5 s
    clock.now += 61.0
    call(t, clock, elapsed=0.2)  # cold again, yet quicker than a warm call: no extra at all
    assert t.state(clock.now).cold_start_s == pytest.approx(1.0)  # halfway from 2.0 to 0


def test_a_reload_applies_new_breaker_settings_and_drops_the_cold_start_of_a_backend_no_longer_serverless() -> None:
    clock = Clock()
    tracked = SaturationTracker(clock)
    t = tracked.track("b", TrackerSettings(max_concurrency=4, serverless=True, cold_start_s=2.0))
    tracked.track("b", TrackerSettings(max_concurrency=4, breaker_failures=1))
    assert t.state(clock.now).cold_start_s == 0.0
    call(t, clock, fail=FailureKind.UNAVAILABLE)
    assert t.state(clock.now).breaker is BreakerState.OPEN


def test_a_reload_that_does_not_grow_the_limit_wakes_no_waiter() -> None:
    clock = Clock()
    tracked = SaturationTracker(clock)
    t = tracked.track("b", TrackerSettings(max_concurrency=4))
    woken: list[int] = []
    t.on_free = lambda: woken.append(t.capacity)
    tracked.track("b", TrackerSettings(max_concurrency=4, breaker_failures=2))  # the same limit
    tracked.track("b", TrackerSettings(max_concurrency=2))  # a smaller one
    assert t.capacity == 2
    assert woken == []  # (a limit that grows wakes them: see the reload from fixed to auto)


def test_a_reload_keeps_the_limit_a_backend_was_held_to_or_learned() -> None:
    clock = Clock()
    tracked = SaturationTracker(clock)
    t = tracked.track("b", TrackerSettings(max_concurrency=8))
    call(t, clock, fail=FailureKind.THROTTLED)
    assert t.capacity == 4
    tracked.track("b", TrackerSettings(max_concurrency=16))
    assert (t.capacity, t.state(clock.now).max_capacity) == (4, 16)  # regrown by successes, not by the reload
    auto = tracked.track("c", TrackerSettings(max_concurrency=50, adaptive=GradientSettings(initial=3, max=50)))
    for _ in range(100):
        for _ in range(auto.capacity):
            auto.start(clock.now)
        clock.now += 0.02
        for _ in range(auto.inflight):
            auto.succeeded(clock.now, 0.02)
    learned = auto.capacity
    assert learned > 3
    tracked.track("c", TrackerSettings(max_concurrency=200, adaptive=GradientSettings(initial=3, max=200)))
    assert (auto.capacity, auto.state(clock.now).max_capacity) == (learned, 200)


async def test_a_slot_handed_to_a_waiter_that_has_not_started_its_call_is_not_free_in_the_snapshot() -> None:
    from router.flow.admission import Admission, QueueSettings, Ticket

    clock = Clock()
    t = tracker(clock, max_concurrency=1)
    admission = Admission("b", t, QueueSettings(max_depth=4, max_wait_s=5.0), clock=clock)
    t.start(clock.now)
    waiter = asyncio.create_task(admission.wait(Ticket(1), clock.now, 5.0))
    await asyncio.sleep(0)  # it queues
    assert len(admission.queue) == 1
    clock.now += 0.01
    t.succeeded(clock.now, 0.01)  # the call ends: its slot is handed to the waiter, which has not woken yet
    assert (t.inflight, admission.reserved) == (0, 1)
    assert not admission.has_room()
    assert t.state(clock.now).saturation == 1.0  # a request deciding now sees the backend full, as the door does
    await waiter
    t.start(clock.now)  # the waiter's call
    assert (t.inflight, admission.reserved, t.state(clock.now).saturation) == (1, 0, 1.0)
