"""Concurrency-limit algorithms fed synthetic samples on a fake clock: exact values, no servers."""

from __future__ import annotations

import math

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


def test_fixed_limit_spaces_its_cuts_by_the_smoothed_service_time() -> None:
    limit = FixedLimit(16)
    limit.on_sample(0.0, 0.5, 1, OK)  # the first call sets the service time: 0.5 s
    limit.on_sample(1.0, 1.0, 1, OK)  # then a fifth of the way to each: 0.6 s
    limit.on_sample(10.0, 0.0, 16, THROTTLED)
    assert limit.limit == 8.0
    limit.on_sample(10.55, 0.0, 16, THROTTLED)  # within one service time: the same overload
    assert limit.limit == 8.0
    limit.on_sample(10.65, 0.0, 16, THROTTLED)
    assert limit.limit == 4.0


def test_a_reload_caps_a_fixed_limit_at_its_new_number_and_a_higher_one_is_regrown_into() -> None:
    limit = FixedLimit(8)
    limit.on_sample(0.0, 0.0, 8, THROTTLED)  # 4
    limit.resize(2)
    assert (limit.limit, limit.ceiling) == (2.0, 2)
    limit.resize(16)
    assert (limit.limit, limit.ceiling) == (2.0, 16)  # no jump: it grows back by AIMD
    for i in range(200):
        limit.on_sample(1.0 + i, 0.01, 16, OK)
    assert limit.limit == 16.0


def test_a_reload_clamps_a_learned_limit_into_the_new_bounds() -> None:
    limit = GradientLimit(settings(initial=20))
    limit.resize(settings(min=1, max=8))
    assert (limit.limit, limit.ceiling) == (8.0, 8)
    limit.resize(settings(min=12, max=30))
    assert (limit.limit, limit.ceiling) == (12.0, 30)
    limit.resize(settings(min=1, max=50))
    assert (limit.limit, limit.ceiling) == (12.0, 50)  # within the bounds: kept


def test_a_window_lasts_at_least_one_smoothed_round_trip() -> None:
    limit = GradientLimit(settings(initial=4))
    # the smoothed RTT starts at the first sample and moves a fifth of the way to each next one:
    # 0.5, 0.45, 0.41, 0.378, 0.3524 after five samples, 0.33192 after six
    for now, rtt in ((0.2, 0.5), (0.25, 0.25), (0.3, 0.25), (0.33, 0.25), (0.34, 0.25)):
        limit.on_sample(now, rtt, 4, OK)
    assert limit.min_rtt == math.inf  # five samples, but 0.34 s is less than one smoothed round trip
    limit.on_sample(0.36, 0.25, 4, OK)
    assert limit.min_rtt == 0.25  # the window closed: its median is the first baseline


def test_a_window_starts_when_the_limit_is_created_and_closes_at_exactly_its_minimum_length() -> None:
    limit = GradientLimit(settings(window_min_s=0.125), now=100.0)
    for _ in range(5):
        limit.on_sample(100.0625, 0.02, 4, OK)
    assert limit.min_rtt == math.inf
    limit.on_sample(100.125, 0.02, 4, OK)
    assert limit.min_rtt == 0.02


def test_cuts_are_spaced_by_at_least_the_minimum_window() -> None:
    limit = GradientLimit(settings(initial=20, window_min_s=0.125))
    limit.on_sample(2.0, 0.0, 20, THROTTLED)
    assert limit.limit == 18.0
    limit.on_sample(2.0625, 0.0, 20, THROTTLED)
    assert limit.limit == 18.0
    limit.on_sample(2.125, 0.0, 20, THROTTLED)
    assert limit.limit == pytest.approx(16.2)


def test_the_limit_may_grow_to_its_max_until_a_cut_then_at_the_probe_rate_from_the_cut() -> None:
    limit = GradientLimit(settings(initial=20, max=100))
    assert limit.allowed(5.0) == 100.0
    limit.on_sample(10.0, 0.0, 20, THROTTLED)
    assert limit.allowed(10.0) == 18.0
    assert limit.allowed(12.0) == pytest.approx(18.0 * (1 + 0.05 * 2) + 0.5 * 2)


def window(limit: GradientLimit, now: float, rtt: float | list[float], inflight: int,
           waiting: tuple[float, ...] = ()) -> None:
    """One window of five successes at ``now`` (at least window_min_s after the last), after the queue reports."""
    for w in waiting:
        limit.on_queue_report(now, w)
    for r in rtt if isinstance(rtt, list) else [rtt] * 5:
        limit.on_sample(now, r, inflight, OK)


def test_the_baseline_is_a_windows_median_not_its_fastest_call() -> None:
    limit = GradientLimit(settings())
    window(limit, 1.0, [0.05, 0.01, 0.04, 0.02, 0.03], 4)
    assert limit.min_rtt == 0.03


def test_a_window_moves_the_limit_a_fifth_of_the_way_to_limit_times_gradient_plus_headroom() -> None:
    limit = GradientLimit(settings(initial=10))
    window(limit, 1.0, 0.02, 10)  # gradient (1.2 x 0.02 + 0.002) / 0.02 = 1.3
    assert limit.limit == pytest.approx(10 + 0.2 * (10 * 1.3 + 0.5 - 10))  # 10.7
    fast = GradientLimit(settings(initial=4))
    window(fast, 1.0, 0.001, 4)  # (1.2 x 0.001 + 0.002) / 0.001 = 3.2: clamped to 2
    assert fast.limit == pytest.approx(4 + 0.2 * (4 * 2 + 0.5 - 4))  # 4.9


def test_a_limit_used_to_exactly_half_still_grows_and_below_half_holds() -> None:
    half = GradientLimit(settings(initial=10))
    window(half, 1.0, 0.02, 5)
    assert half.limit == pytest.approx(10.7)
    flat = settings(initial=10, tolerance=1.0, jitter_s=0.0)  # a steady latency is a gradient of exactly 1
    unused = GradientLimit(flat)
    window(unused, 1.0, 0.02, 4)
    assert unused.limit == 10.0  # under half used: held, headroom too
    used = GradientLimit(flat)
    window(used, 1.0, 0.02, 10)
    assert used.limit == pytest.approx(10.1)  # a gradient of 1 grows by the headroom alone: 0.2 x 0.5


def test_a_windows_average_waiting_of_one_or_more_shrinks_the_gradient_to_limit_over_limit_plus_waiting() -> None:
    limit = GradientLimit(settings(initial=10))
    window(limit, 1.0, 0.02, 10, waiting=(1.0, 1.0))  # average 1: gradient min(1.3, 10 / 11)
    assert limit.limit == pytest.approx(10 + 0.2 * (10 * 10 / 11 + 0.5 - 10))  # 9.918
    before = limit.limit
    window(limit, 2.0, 0.02, 10, waiting=(0.5, 0.5))  # the next window's average alone: 0.5, under one
    assert limit.limit == pytest.approx(before + 0.2 * (before * 1.3 + 0.5 - before))
    three = GradientLimit(settings(initial=10))
    window(three, 1.0, 0.02, 10, waiting=(2.0, 4.0))  # average 3
    assert three.limit == pytest.approx(10 + 0.2 * (10 * 10 / 13 + 0.5 - 10))


def test_only_consecutive_windows_held_at_the_floor_relearn_the_latency() -> None:
    limit = GradientLimit(settings(initial=5, min=5, max=5, tolerance=1.0, jitter_s=0.0))
    window(limit, 1.0, 0.02, 5)  # at its baseline: a gradient of exactly 1, not held down
    for second in (2.0, 3.0):  # 2 windows 25x slower: held at the floor
        window(limit, second, 0.5, 5)
    window(limit, 4.0, 0.02, 5)  # back to its baseline: the run is broken
    window(limit, 5.0, 0.5, 5)
    assert limit.min_rtt == 0.02
    for second in (6.0, 7.0, 8.0, 9.0):  # 5 in a row
        window(limit, second, 0.5, 5)
    assert limit.min_rtt == 0.5
    for second in (100.0, 200.0, 300.0, 400.0):  # slower again: a new run of 5 is needed
        window(limit, second, 5.0, 5)
    assert limit.min_rtt == 0.5
    window(limit, 500.0, 5.0, 5)
    assert limit.min_rtt == 5.0


def test_a_backend_reporting_a_queue_from_its_first_window_counts_toward_the_floor_from_there() -> None:
    limit = GradientLimit(settings(initial=5, min=5, max=5))
    window(limit, 1.0, 0.02, 5, waiting=(5.0,))  # gradient min(1.3, 5 / 10): held at the floor
    for second in (2.0, 3.0, 4.0):
        window(limit, second, 0.5, 5)
    assert limit.min_rtt == 0.02  # 4 windows
    window(limit, 5.0, 0.5, 5)
    assert limit.min_rtt == 0.5
