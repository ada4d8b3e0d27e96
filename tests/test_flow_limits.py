"""Concurrency-limit algorithms fed synthetic samples on a fake clock: exact values, no servers."""

from __future__ import annotations

import pytest

from router.flow.limits import FixedLimit, GradientLimit, GradientSettings, Outcome

OK, THROTTLED = Outcome.SUCCESS, Outcome.THROTTLED


def test_fixed_limit_regrows_by_one_per_window_of_successes_not_per_success() -> None:
    limit = FixedLimit(8)
    limit.on_sample(0.0, 0.0, 8, THROTTLED)
    assert limit.limit == 4.0
    expected = 4.0
    for i in range(4):  # a window at limit 4 is 4 successes: each adds 1/limit
        limit.on_sample(1.0 + i, 0.01, 4, OK)
        expected += 1.0 / expected
        assert limit.limit == pytest.approx(expected, abs=1e-12)
    assert int(limit.limit) == 4  # 4.92: still short of 5 after one window
    limit.on_sample(10.0, 0.01, 4, OK)
    assert int(limit.limit) == 5


def test_fixed_limit_halves_at_most_once_per_service_time_and_never_exceeds_the_configured_number() -> None:
    limit = FixedLimit(16)
    for i in range(20):
        limit.on_sample(i / 64, 0.125, 1, OK)  # service time settles at exactly 0.125 s
    assert limit.limit == 16.0  # capped at the configured number
    limit.on_sample(1.0, 0.001, 16, THROTTLED)
    assert limit.limit == 8.0
    limit.on_sample(1.0625, 0.001, 16, THROTTLED)  # the same overload, within one service time
    assert limit.limit == 8.0
    limit.on_sample(1.125, 0.001, 16, THROTTLED)
    assert limit.limit == 4.0
    for i in range(2, 6):
        limit.on_sample(1.0 + 0.125 * i, 0.001, 16, THROTTLED)
    assert limit.limit == 1.0  # never below one call


def settings(**kw: float) -> GradientSettings:
    return GradientSettings(**kw)  # type: ignore[arg-type]


def drive(limit: GradientLimit, rtt_of: object, seconds: float, start: float = 0.0, step: float = 0.02) -> float:
    """A closed loop: every ``step`` seconds the backend answers as many calls as the limit admits."""
    now = start
    while now < start + seconds:
        now += step
        admitted = max(1, int(limit.limit))
        rtt = rtt_of(admitted)  # type: ignore[operator]
        for _ in range(admitted):
            limit.on_sample(now, rtt, admitted, OK)
    return now


def test_gradient_converges_where_the_latency_ratio_balances_the_headroom() -> None:
    s = settings()
    limit = GradientLimit(s)

    def queueing(inflight: int) -> float:  # 16 slots, 20 ms each, the rest wait in line
        return 0.020 * max(1.0, inflight / 16)

    drive(limit, queueing, 60.0)
    # Equilibrium of L <- L*g + headroom with g = (tolerance*min_rtt + jitter) / rtt(L):
    #   L*0.02/16 = (1.2*0.02 + 0.002) * L / (L - 0.5)  ->  L = 21.3 (+-1 from integer admission)
    assert limit.min_rtt == 0.020
    assert 20.3 <= limit.limit <= 22.3


def test_gradient_grows_from_its_initial_limit_while_latency_stays_flat_up_to_max() -> None:
    limit = GradientLimit(settings(initial=2, max=40))
    drive(limit, lambda inflight: 0.02, 30.0)
    assert limit.limit == 40.0


def test_gradient_does_not_grow_on_a_limit_it_does_not_use() -> None:
    limit = GradientLimit(settings(initial=10))
    now = 0.0
    for _ in range(200):
        now += 0.02
        limit.on_sample(now, 0.02, 4, OK)  # 4 in flight: under half of 10
    assert limit.limit == 10.0


def test_throttling_cuts_by_the_backoff_but_at_least_one_call_once_per_round_trip() -> None:
    limit = GradientLimit(settings(initial=20))
    limit.on_sample(1.0, 0.02, 20, OK)  # one round trip is 20 ms
    limit.on_sample(2.0, 0.001, 20, THROTTLED)
    assert limit.limit == 18.0  # x0.9
    limit.on_sample(2.01, 0.001, 20, THROTTLED)  # the same overload: within one round trip
    assert limit.limit == 18.0
    small = GradientLimit(settings(initial=4))
    small.on_sample(1.0, 0.001, 4, THROTTLED)
    assert small.limit == 3.0  # 0.9 x 4 = 3.6 would admit 3 anyway; never "cut" to the same capacity


def test_after_a_cut_the_limit_regrows_only_at_the_probe_rate() -> None:
    limit = GradientLimit(settings(initial=20))
    limit.on_sample(0.0, 0.001, 20, THROTTLED)
    assert limit.limit == 18.0
    assert limit.allowed(0.0) == 18.0
    assert limit.allowed(2.0) == pytest.approx(18.0 * (1 + 0.05 * 2) + 0.5 * 2)  # 20.8
    drive(limit, lambda inflight: 0.02, 2.0)
    assert 18.0 < limit.limit <= 20.8


def test_timeouts_cut_like_throttling_and_other_failures_say_nothing() -> None:
    limit = GradientLimit(settings(initial=10))
    limit.on_sample(1.0, 0.0, 10, Outcome.IGNORED)
    assert limit.limit == 10.0
    limit.on_sample(1.0, 0.0, 10, Outcome.DROPPED)
    assert limit.limit == 9.0


def test_gradient_stays_within_min_and_max() -> None:
    limit = GradientLimit(settings(initial=5, min=3, max=6))
    for i in range(20):
        limit.on_sample(float(i), 0.001, 5, THROTTLED)
    assert limit.limit == 3.0
    drive(limit, lambda inflight: 0.02, 60.0, start=100.0)
    assert limit.limit == 6.0
    lowest = 6.0
    now = 200.0
    while now < 230.0:  # latency x50: the gradient says shrink, the floor holds
        now = drive(limit, lambda inflight: 1.0, 1.0, start=now, step=1.0)
        lowest = min(lowest, limit.limit)
    assert lowest == 3.0


def test_a_limit_held_at_its_floor_for_five_windows_relearns_the_backends_latency() -> None:
    limit = GradientLimit(settings(initial=5, min=5, max=5))

    def window(now: float, rtt: float) -> None:  # 5 samples, a second after the last window: one window each
        for _ in range(5):
            limit.on_sample(now, rtt, 5, OK)

    window(1.0, 0.02)
    for second in range(2, 6):  # 4 windows at the floor, 25x slower
        window(float(second), 0.5)
    assert limit.min_rtt == 0.02
    window(6.0, 0.5)  # the 5th
    assert limit.min_rtt == 0.5  # the backend got slower for good: its new latency is the baseline


def test_a_backend_reporting_waiting_requests_shrinks_the_limit_although_latency_is_flat() -> None:
    limit = GradientLimit(settings(initial=20))
    drive(limit, lambda inflight: 0.02, 0.2)
    before = limit.limit
    now = 1.0
    for _ in range(20):
        now += 0.02
        for _ in range(int(limit.limit)):
            limit.on_queue_report(now, 10.0)
            limit.on_sample(now, 0.02, int(limit.limit), OK)
    assert limit.limit < before * 0.8
