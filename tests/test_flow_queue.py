"""The admission queue's order, bound and eviction, as a pure structure: exact orders, no clock, no I/O."""

from __future__ import annotations

import math

import pytest

from router.flow.queue import AdmissionQueue, ArrivalRates, Waiter, predicted_wait_s

CRITICAL, HIGH, NORMAL, LOW = 3, 2, 1, 0


def drain(q: AdmissionQueue) -> list[Waiter]:
    out = []
    while (w := q.pop()) is not None:
        out.append(w)
    return out


def names(ws: list[Waiter], by: dict[int, str]) -> list[str]:
    return [by[id(w)] for w in ws]


def queue_of(q: AdmissionQueue, spec: list[tuple[str, int, str, float, float]]) -> dict[int, str]:
    """Push (label, priority, tenant, weight, deadline) in order; label by object id."""
    labels = {}
    for label, priority, tenant, weight, deadline in spec:
        w = Waiter(priority, tenant, weight, deadline)
        assert q.push(w).queued
        labels[id(w)] = label
    return labels


def test_more_urgent_levels_are_served_first_whatever_their_arrival() -> None:
    q = AdmissionQueue(16)
    labels = queue_of(q, [("low", LOW, "a", 1, math.inf), ("normal", NORMAL, "a", 1, math.inf),
                          ("critical", CRITICAL, "a", 1, math.inf), ("high", HIGH, "a", 1, math.inf),
                          ("normal2", NORMAL, "a", 1, math.inf)])
    assert names(drain(q), labels) == ["critical", "high", "normal", "normal2", "low"]


def test_tenants_of_one_level_take_turns_by_weight() -> None:
    q = AdmissionQueue(64)
    spec = [(f"heavy{i}", NORMAL, "heavy", 1.0, math.inf) for i in range(6)]
    spec += [(f"light{i}", NORMAL, "light", 1.0, math.inf) for i in range(3)]
    spec += [(f"gold{i}", NORMAL, "gold", 2.0, math.inf) for i in range(5)]
    labels = queue_of(q, spec)
    # one round: heavy 1, light 1, gold 2; tenants that run dry leave the round
    assert names(drain(q), labels) == [
        "heavy0", "light0", "gold0", "gold1",
        "heavy1", "light1", "gold2", "gold3",
        "heavy2", "light2", "gold4",
        "heavy3", "heavy4", "heavy5"]


def test_a_tenant_that_starts_waiting_goes_before_the_backlogged_for_one_turn() -> None:
    q = AdmissionQueue(64)
    heavy = [Waiter(NORMAL, "heavy") for _ in range(6)]
    for w in heavy:
        q.push(w)
    assert [q.pop(), q.pop()] == heavy[:2]  # heavy is backlogged now
    light = [Waiter(NORMAL, "light"), Waiter(NORMAL, "light")]
    for w in light:
        q.push(w)
    assert q.ahead(NORMAL, "other") == 1  # a third tenant would wait for light's turn only
    # light's first request takes the next slot; then the two take turns
    assert drain(q) == [light[0], heavy[2], light[1], *heavy[3:]]


def test_a_fractional_weight_earns_a_turn_over_several_rounds() -> None:
    q = AdmissionQueue(64)
    labels = queue_of(q, [(f"a{i}", NORMAL, "a", 1.0, math.inf) for i in range(4)]
                      + [(f"b{i}", NORMAL, "b", 0.5, math.inf) for i in range(2)])
    assert names(drain(q), labels) == ["a0", "a1", "b0", "a2", "a3", "b1"]


def test_within_a_tenant_the_earliest_deadline_goes_first_then_arrival_order() -> None:
    q = AdmissionQueue(16)
    labels = queue_of(q, [("no-deadline", NORMAL, "a", 1, math.inf), ("late", NORMAL, "a", 1, 9.0),
                          ("soon", NORMAL, "a", 1, 2.0), ("late-again", NORMAL, "a", 1, 9.0),
                          ("no-deadline2", NORMAL, "a", 1, math.inf)])
    assert names(drain(q), labels) == ["soon", "late", "late-again", "no-deadline", "no-deadline2"]


def test_a_full_queue_evicts_the_least_urgent_most_recent_waiter_for_a_more_urgent_arrival() -> None:
    q = AdmissionQueue(3)
    old_low, new_low, normal = Waiter(LOW, "a"), Waiter(LOW, "b"), Waiter(NORMAL, "a")
    for w in (old_low, new_low, normal):
        assert q.push(w).queued
    high = Waiter(HIGH, "c")
    pushed = q.push(high)
    assert pushed.queued
    assert pushed.evicted is new_low
    assert len(q) == 3
    assert drain(q) == [high, normal, old_low]


def test_a_full_queue_refuses_an_arrival_no_more_urgent_than_anyone_waiting() -> None:
    q = AdmissionQueue(2)
    assert q.push(Waiter(NORMAL, "a")).queued
    assert q.push(Waiter(HIGH, "a")).queued
    assert q.push(Waiter(NORMAL, "b")) == (False, None)  # equal to the least urgent: refused
    assert q.push(Waiter(LOW, "b")) == (False, None)
    assert len(q) == 2
    assert AdmissionQueue(0).push(Waiter(CRITICAL, "a")) == (False, None)  # queueing off


def test_removed_waiters_are_never_served_and_an_emptied_tenant_leaves_the_round() -> None:
    q = AdmissionQueue(16)
    a1, a2, b1, b2 = Waiter(NORMAL, "a"), Waiter(NORMAL, "a"), Waiter(NORMAL, "b"), Waiter(NORMAL, "b")
    for w in (a1, a2, b1, b2):
        q.push(w)
    assert q.remove(a1)
    assert q.remove(a2)
    assert not q.remove(a1)
    assert q.levels() == ((NORMAL, 2),)
    assert drain(q) == [b1, b2]
    assert q.levels() == ()
    assert len(q) == 0


def test_ahead_counts_more_urgent_levels_the_own_tenant_and_a_fair_share_of_the_others() -> None:
    q = AdmissionQueue(64)
    for _ in range(2):
        q.push(Waiter(HIGH, "x"))
    for _ in range(10):
        q.push(Waiter(NORMAL, "heavy"))
    mine = [Waiter(NORMAL, "light", deadline=5.0), Waiter(NORMAL, "light")]
    for w in mine:
        q.push(w)
    for _ in range(3):
        q.push(Waiter(LOW, "x"))
    assert q.ahead(CRITICAL, "anyone") == 0
    assert q.ahead(HIGH, "x") == 2  # both high waiters arrived first
    # a new light request: 2 high + its own 2 + heavy gets 3 turns while light earns its 3rd
    assert q.ahead(NORMAL, "light") == 2 + 2 + 3
    assert q.ahead(NORMAL, "light", deadline=1.0) == 2 + 0 + 1  # EDF: first in its tenant
    assert q.ahead(NORMAL, "newcomer") == 2 + 1 + 1  # a tenant not yet waiting: one turn of each other
    assert q.ahead(NORMAL, "light", seq=mine[1].seq) == 2 + 1 + 2  # a queued waiter: without itself
    assert q.ahead(LOW, "y") == 2 + 12 + 1  # another tenant of the low level: one turn of x first


def test_predicted_wait_is_one_slot_turn_per_waiter_ahead() -> None:
    assert predicted_wait_s(0, 4, 0.1) == 0.025
    assert predicted_wait_s(7, 4, 0.1) == 0.2
    assert predicted_wait_s(3, 0, 0.1) == 0.4  # a capacity of 0 counts as 1


def test_more_urgent_arrivals_take_their_slots_first_so_the_wait_grows_until_it_has_no_bound() -> None:
    rates = ArrivalRates(window_s=2.0)
    for i in range(400):  # 20 high arrivals per second for 20 s: the estimate settles at 20/s
        rates.observe(HIGH, i * 0.05)
    assert rates.above(NORMAL, 20.0) == pytest.approx(20.0, rel=0.03)
    assert rates.above(HIGH, 20.0) == 0.0  # its own level does not overtake it
    assert rates.above(NORMAL, 22.0) == pytest.approx(20.0 / math.e, rel=0.03)  # quiet for one window
    fresh = ArrivalRates(window_s=2.0)
    for i in range(20):  # one second of a new stream: the window is half full, the rate is not half as high
        fresh.observe(CRITICAL, 100.0 + i * 0.05)
    assert fresh.above(HIGH, 101.0) == pytest.approx(20.0, rel=0.15)
    # 4 slots of 0.1 s serve 40/s; with 20/s of high arrivals a normal request gets the other 20/s
    assert predicted_wait_s(3, 4, 0.1, rate_above=20.0) == pytest.approx(4 / 20.0)
    assert predicted_wait_s(3, 4, 0.1, rate_above=39.0) == math.inf
    assert predicted_wait_s(3, 4, 0.0) == 0.0  # nothing known yet about the backend's latency


def test_a_push_with_room_evicts_no_one() -> None:
    q = AdmissionQueue(2)
    assert q.push(Waiter(NORMAL, "a")) == (True, None)
    assert q.push(Waiter(HIGH, "a")) == (True, None)


def test_remove_takes_out_exactly_that_waiter_among_equal_deadlines() -> None:
    q = AdmissionQueue(16)
    ws = [Waiter(NORMAL, "a", deadline=d) for d in (5.0, 5.0, 5.0, 2.0, math.inf, 5.0)]
    for w in ws:
        q.push(w)
    assert q.remove(ws[1])
    assert q.remove(ws[5])
    assert drain(q) == [ws[3], ws[0], ws[2], ws[4]]


def test_removing_the_last_waiter_of_a_level_removes_the_level() -> None:
    q = AdmissionQueue(16)
    low, normal = Waiter(LOW, "a"), Waiter(NORMAL, "a")
    q.push(low)
    q.push(normal)
    assert q.remove(low)
    assert q.levels() == ((NORMAL, 1),)
    again = Waiter(LOW, "b")
    assert q.push(again).queued
    assert drain(q) == [normal, again]


def test_a_full_queue_evicts_from_the_least_urgent_of_several_levels() -> None:
    q = AdmissionQueue(3)
    high, normal, low = Waiter(HIGH, "a"), Waiter(NORMAL, "a"), Waiter(LOW, "a")
    for w in (high, normal, low):
        q.push(w)
    later = Waiter(NORMAL, "b")
    assert q.push(later).evicted is low  # more urgent than the least urgent level, not than the others
    assert q.push(Waiter(CRITICAL, "b")).evicted is later  # now normal is the least urgent: its latest
    assert q.levels() == ((CRITICAL, 1), (HIGH, 1), (NORMAL, 1))


def test_ahead_gives_other_tenants_their_weights_share_of_the_rounds_a_tenant_needs() -> None:
    q = AdmissionQueue(64)
    for _ in range(10):
        q.push(Waiter(NORMAL, "gold", weight=2.0))
    for _ in range(2):
        q.push(Waiter(NORMAL, "plain"))
    # a new plain request needs 3 rounds: gold is served 2 per round meanwhile
    assert q.ahead(NORMAL, "plain") == 2 + 6
    # a new gold request needs 11 / 2 = 5.5 rounds: plain is served 1 per round, at most the 2 it has
    assert q.ahead(NORMAL, "gold") == 10 + 2
    few = AdmissionQueue(64)
    for _ in range(3):
        few.push(Waiter(NORMAL, "gold", weight=2.0))
    for _ in range(10):
        few.push(Waiter(NORMAL, "plain"))
    assert few.ahead(NORMAL, "gold") == 3 + 2  # 4 / 2 = 2 rounds: 2 of plain's


def test_one_arrival_counts_as_a_quarter_window_not_a_flood() -> None:
    rates = ArrivalRates(window_s=2.0)
    rates.observe(HIGH, 10.0)
    assert rates.above(NORMAL, 10.0) == pytest.approx(0.5 / (1 - math.exp(-0.25)))  # 2.26/s, not 1/0


def test_arrival_rates_decay_over_two_seconds_by_default() -> None:
    rates = ArrivalRates()
    for i in range(400):
        rates.observe(HIGH, i * 0.05)
    assert rates.above(NORMAL, 22.0) == pytest.approx(20.0 / math.e, rel=0.03)


def test_a_run_of_arrivals_continues_until_its_rate_has_decayed_below_a_hundredth_per_window() -> None:
    rates = ArrivalRates(window_s=2.0)
    rates.observe(HIGH, 0.0)
    rates.observe(HIGH, 1.0)  # the same run: it began at 0
    rate = 0.5 * math.exp(-0.5) + 0.5
    assert rates.above(NORMAL, 1.0) == pytest.approx(rate / (1 - math.exp(-0.5)))
    rates.observe(HIGH, 9.0)  # 0.8 x e^-4 = 0.015/s: still above 0.01 per window (0.005/s)
    rate = rate * math.exp(-4.0) + 0.5
    assert rates.above(NORMAL, 9.0) == pytest.approx(rate / (1 - math.exp(-4.5)))
    rates.observe(HIGH, 30.0)  # quiet for 10 windows: a new run
    assert rates.above(NORMAL, 30.0) == pytest.approx(0.5 / (1 - math.exp(-0.25)), rel=1e-3)


def test_every_more_urgent_level_takes_its_slots() -> None:
    rates = ArrivalRates(window_s=2.0)
    rates.observe(HIGH, 10.0)
    rates.observe(CRITICAL, 10.0)
    assert rates.above(NORMAL, 10.0) == pytest.approx(2 * 0.5 / (1 - math.exp(-0.25)))
    assert rates.above(HIGH, 10.0) == pytest.approx(0.5 / (1 - math.exp(-0.25)))


def test_when_more_urgent_arrivals_take_95_percent_of_the_slots_the_wait_has_no_bound() -> None:
    assert predicted_wait_s(3, 4, 0.1, rate_above=38.0) == math.inf  # 40/s served, 2/s left: 5%
    assert predicted_wait_s(3, 4, 0.1, rate_above=37.0) == pytest.approx(4 / 3.0)
