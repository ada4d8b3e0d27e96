"""The retry budget on a fake clock: deposit ratio, burst cap, the legacy rate floor, and <= 1.2 calls/request."""

from __future__ import annotations

import random

import pytest

from router.config import FallbackConfig
from router.flow.budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_starts_with_its_burst_and_each_request_deposits_the_ratio() -> None:
    budget = RetryBudget(0.15, clock=Clock(), burst=10)
    assert [budget.withdraw() for _ in range(11)] == [True] * 10 + [False]
    for _ in range(6):
        budget.deposit()  # 6 x 0.15 = 0.9: not a whole retry yet
    assert not budget.withdraw()
    budget.deposit()  # 1.05
    assert budget.withdraw()
    assert budget.tokens == pytest.approx(0.05)


def test_unused_tokens_are_kept_up_to_the_burst() -> None:
    budget = RetryBudget(0.5, clock=Clock(), burst=4)
    for _ in range(100):
        budget.deposit()
    assert budget.tokens == 4.0


def test_the_legacy_rate_floor_refills_with_time_only_when_set() -> None:
    clock = Clock()
    budget = RetryBudget(0.0, min_per_s=2.0, clock=clock, burst=10)
    while budget.withdraw():
        pass
    clock.now += 0.5  # 2 per second: one token
    assert budget.withdraw()
    assert not budget.withdraw()
    without = RetryBudget(0.0, clock=clock, burst=1)
    assert without.withdraw()
    clock.now += 100.0
    assert not without.withdraw()


@pytest.mark.parametrize("rate", [10, 100, 1000])
def test_default_budget_keeps_calls_per_request_at_or_below_1_2_with_30_percent_failures(rate: int) -> None:
    defaults = FallbackConfig()
    clock = Clock()
    budget = RetryBudget(defaults.retry_budget, defaults.min_retries_per_second, clock, defaults.retry_burst)
    rng = random.Random(rate)
    requests = calls = 0
    for _ in range(60 * rate):  # one minute, each request may fall back once (a two-hop route)
        clock.now += 1.0 / rate
        requests += 1
        budget.deposit()
        calls += 1
        if rng.random() < 0.3 and budget.withdraw():
            calls += 1
    assert calls / requests <= 1.2
    assert calls / requests >= 1.15  # and the budget is actually spent: 0.15 per request plus the burst


def test_a_budget_built_with_its_ratio_alone_holds_the_configured_default_burst() -> None:
    defaults = FallbackConfig()
    budget = RetryBudget(defaults.retry_budget, clock=Clock())
    burst = int(defaults.retry_burst)
    assert [budget.withdraw() for _ in range(burst + 1)] == [True] * burst + [False]


def test_a_rate_floor_below_one_per_second_still_refills() -> None:
    clock = Clock()
    budget = RetryBudget(0.0, min_per_s=0.5, clock=clock, burst=1)
    assert budget.withdraw()
    clock.now += 1.0  # half a token
    assert not budget.withdraw()
    clock.now += 1.0  # a whole one
    assert budget.withdraw()


def test_a_reload_keeps_the_saved_tokens_up_to_the_new_burst_and_applies_the_new_ratio() -> None:
    budget = RetryBudget(0.15, clock=Clock(), burst=10)
    for _ in range(4):
        assert budget.withdraw()  # 6 left
    budget.reconfigure(0.5, 0.0, 20.0)
    assert [budget.withdraw() for _ in range(7)] == [True] * 6 + [False]  # kept 6, not refilled to 20
    budget.deposit()
    budget.deposit()  # 2 x 0.5: the new ratio
    assert budget.withdraw()
    for _ in range(100):
        budget.deposit()
    assert [budget.withdraw() for _ in range(21)] == [True] * 20 + [False]  # the new burst
    smaller = RetryBudget(0.15, clock=Clock(), burst=10)
    smaller.reconfigure(0.15, 0.0, 1.0)
    assert [smaller.withdraw() for _ in range(2)] == [True, False]  # cut down to the new burst, the least allowed


def test_a_reload_that_sets_a_rate_floor_refills_from_the_reload_not_from_the_start() -> None:
    clock = Clock()
    budget = RetryBudget(0.0, clock=clock, burst=5)
    while budget.withdraw():
        pass
    clock.now += 100.0
    budget.reconfigure(0.0, 1.0, 5.0)
    assert not budget.withdraw()  # the 100 s before the floor existed earn nothing
    clock.now += 1.0
    assert budget.withdraw()
    assert not budget.withdraw()
