"""The breaker on a fake clock: failure rate over a window, minimum volume, probing share, dead backends."""

from __future__ import annotations

import random

from router.flow.breaker import Breaker, BreakerSettings
from router.types import BreakerState

OPEN, CLOSED, HALF_OPEN = BreakerState.OPEN, BreakerState.CLOSED, BreakerState.HALF_OPEN


def feed(b: Breaker, now: float, pattern: str) -> None:
    """One call per character at ``now``: ``x`` failed (health), ``.`` answered."""
    for c in pattern:
        b.on_start(now)
        b.on_result(now, healthy=c == ".")
        b.on_end()


def test_opens_when_the_failure_rate_over_the_window_reaches_the_threshold() -> None:
    b = Breaker(BreakerSettings())  # 80% of at least 20 calls over 10 s
    feed(b, 1.0, "xxxx." * 3 + "xxxx")  # 19 calls, 16 failed (84%): under the minimum volume
    assert b.current(1.0) is CLOSED
    feed(b, 1.0, ".")  # 20 calls, 16 failed: exactly 80% but the last one answered
    assert b.current(1.0) is CLOSED
    feed(b, 1.0, "x")  # 21 calls, 17 failed: 81%
    assert b.current(1.0) is OPEN


def test_failures_older_than_the_window_do_not_count() -> None:
    b = Breaker(BreakerSettings())
    feed(b, 1.0, "xxxx." * 4)  # 20 calls, 80% failed... all at t=1
    b = Breaker(BreakerSettings())
    feed(b, 1.0, "xxxx." * 3)  # 15 calls, 12 failed at t=1
    feed(b, 12.0, "xxxx.")  # 11 s later: the first 15 have left the window
    assert b.current(12.0) is CLOSED
    assert b.window.counts(12.0) == (5, 4)


def test_a_run_of_consecutive_failures_opens_it_below_the_minimum_volume() -> None:
    b = Breaker(BreakerSettings(failures=5))
    feed(b, 1.0, "xxxx")
    assert b.current(1.0) is CLOSED
    feed(b, 1.0, "x")
    assert b.current(1.0) is OPEN


def test_a_dead_backend_opens_within_the_default_run_of_failures() -> None:
    b = Breaker(BreakerSettings())
    feed(b, 1.0, "x" * 9)
    assert b.current(1.0) is CLOSED
    feed(b, 1.0, "x")
    assert b.current(1.0) is OPEN


def test_while_open_one_request_in_ten_goes_through_as_a_probe() -> None:
    b = Breaker(BreakerSettings(failures=1))
    feed(b, 1.0, "x")
    admitted = [b.admits(2.0) for _ in range(30)]
    assert admitted == ([False] * 9 + [True]) * 3


def test_after_open_for_one_probe_at_a_time_then_a_success_closes_it_with_a_fresh_window() -> None:
    b = Breaker(BreakerSettings(failures=1, open_for_s=5.0))
    feed(b, 1.0, "x")
    assert b.current(6.0) is HALF_OPEN
    assert b.admits(6.0)
    b.on_start(6.0)
    assert not b.admits(6.0)  # a probe is in flight
    b.on_result(6.1, healthy=True)
    b.on_end()
    assert b.current(6.1) is CLOSED
    assert b.window.counts(6.1) == (0, 0)


def test_a_failed_probe_after_open_for_opens_it_again() -> None:
    b = Breaker(BreakerSettings(failures=1, open_for_s=5.0))
    feed(b, 1.0, "x")
    feed(b, 6.0, "x")
    assert b.current(6.0) is OPEN
    assert b.current(10.9) is OPEN  # open_for counts from the new opening
    assert b.current(11.0) is HALF_OPEN


def test_a_backend_failing_half_its_calls_at_random_is_still_served() -> None:
    rng = random.Random(7)
    b = Breaker(BreakerSettings())
    served = 0
    now = 0.0
    for _ in range(20_000):  # 200 req/s for 100 s
        now += 0.005
        if not b.admits(now):
            continue
        b.on_start(now)
        ok = rng.random() < 0.5
        b.on_result(now, healthy=ok)
        b.on_end()
        served += ok
    assert served >= 0.45 * 20_000


def test_it_opens_at_exactly_the_failure_rate_once_the_window_holds_exactly_the_minimum_volume() -> None:
    b = Breaker(BreakerSettings())  # 80% of at least 20 calls
    feed(b, 1.0, ".xxxx" * 3 + ".xxx")  # 19 calls, 15 failed: not yet the volume
    assert b.current(1.0) is CLOSED
    feed(b, 1.0, "x")  # 20 calls, 16 failed: 80% of 20
    assert b.current(1.0) is OPEN


def test_a_young_breaker_counts_only_the_calls_it_saw() -> None:
    b = Breaker(BreakerSettings())
    feed(b, 1.0, ".xxx" * 5)  # 20 calls, 15 failed (75%), in the first second of its life
    assert b.current(1.0) is CLOSED


def test_failures_count_for_the_whole_window_up_to_its_last_bucket() -> None:
    b = Breaker(BreakerSettings())  # 10 s window
    feed(b, 1.0, "xxxx." * 3)  # 15 calls, 12 failed
    feed(b, 10.5, "xxxx")  # 9.5 s later they still count: 19 calls, 16 failed
    assert b.current(10.5) is CLOSED
    feed(b, 10.5, "x")  # 20 calls, 17 failed
    assert b.current(10.5) is OPEN


def test_a_success_restarts_the_run_of_consecutive_failures() -> None:
    b = Breaker(BreakerSettings(failures=3))
    feed(b, 1.0, "xx.xx")
    assert b.current(1.0) is CLOSED
    feed(b, 1.0, "x")
    assert b.current(1.0) is OPEN


def test_with_no_probe_share_an_open_breaker_lets_nothing_through_until_open_for_has_passed() -> None:
    b = Breaker(BreakerSettings(failures=1, open_for_s=5.0, probe_share=0.0))
    feed(b, 1.0, "x")
    assert not any(b.admits(2.0) for _ in range(100))
    assert b.admits(6.0)  # half-open: one probe at a time


def test_a_reload_applies_new_thresholds_to_the_calls_already_counted() -> None:
    b = Breaker(BreakerSettings())
    feed(b, 1.0, "xxxx." * 3)  # 15 calls, 12 failed
    b.reconfigure(BreakerSettings(min_requests=16))  # the same window: its calls are kept
    feed(b, 1.0, "x")  # 16 calls, 13 failed (81%)
    assert b.current(1.0) is OPEN


def test_a_reload_with_another_window_length_starts_counting_afresh() -> None:
    b = Breaker(BreakerSettings())
    feed(b, 1.0, "xxxx." * 3)  # 15 calls, 12 failed
    b.reconfigure(BreakerSettings(window_s=20.0))
    feed(b, 1.0, "xxxx.")  # 5 calls, 4 failed: the 15 before were over the old window
    assert b.current(1.0) is CLOSED
    feed(b, 15.0, ".xxxx" * 3)  # 14 s later, inside the new 20 s window: 20 calls, 16 failed
    assert b.current(15.0) is OPEN
