"""The sync lane's decisions on a fake clock: which hop is called, where a request waits, when it gives up.

``router.lanes.walk`` is pure: it yields ``Call`` and ``Wait`` steps and is sent each one's outcome. Here the
outcomes are scripted (None: answered / granted; a ``BackendError``; a ``Refusal``) and the steps noted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import pytest

from router.flow.budget import RetryBudget
from router.flow.door import RETRY_AFTER_MAX_S, Door, QueueSettings, Ticket
from router.flow.queue import Waiter
from router.lanes.walk import Call, Failed, Refusal, Served, Wait, job_after_failure, walk
from router.state import BackendTracker, TrackerSettings
from router.types import BackendError, FailureKind, Hop, Lane

CRITICAL, HIGH, NORMAL, LOW = 3, 2, 1, 0
A, B, C = Hop(Lane.REALTIME, "a"), Hop(Lane.REALTIME, "b"), Hop(Lane.SERVERLESS, "c")


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class PlainDoor(Door):
    """A door whose waiters are never handed anything here: the walk only reads its room and predictions."""

    def grant(self, waiter: Waiter) -> bool:
        return False

    def grant_background(self, token: Any) -> bool:
        return False

    def turn_away(self, waiter: Waiter, reason: str) -> None:
        pass


class Target(NamedTuple):
    tracker: BackendTracker
    admission: Door


class Counters:
    def __init__(self) -> None:
        self.fallbacks: list[tuple[str, str, str, str]] = []
        self.exhausted: list[str] = []

    def fallback(self, model: str, from_backend: str, to_backend: str, reason: str) -> None:
        self.fallbacks.append((model, from_backend, to_backend, reason))

    def budget_exhausted(self, model: str) -> None:
        self.exhausted.append(model)


class Rejections:
    def __init__(self) -> None:
        self.reasons: list[tuple[str, str]] = []

    def queue_waited(self, backend: str, seconds: float) -> None:
        pass

    def queue_rejected(self, backend: str, reason: str) -> None:
        self.reasons.append((backend, reason))


class Fleet:
    """A model's sync hops, their backends on one fake clock, and the walk's counters."""

    def __init__(self, clock: Clock | None = None, budget: RetryBudget | None = None, **backends: TrackerSettings
                 ) -> None:
        self.clock = clock or Clock()
        self.counters = Counters()
        self.rejections = Rejections()
        self.budget = budget or RetryBudget(0.1, clock=self.clock)
        self.targets = {name: Target(t := BackendTracker(name, s, self.clock),
                                     PlainDoor(name, t, QueueSettings(max_wait_s=1.0), self.rejections))
                        for name, s in backends.items()}

    def tracker(self, name: str) -> BackendTracker:
        return self.targets[name].tracker

    def fill(self, name: str) -> None:
        """Every slot of ``name`` in flight."""
        t = self.tracker(name)
        while t.inflight < t.capacity:
            t.start(self.clock.now)

    def answered(self, name: str, seconds: float) -> None:
        """One call of ``name`` answered in ``seconds``: its service time is known."""
        t = self.tracker(name)
        t.start(self.clock.now)
        t.succeeded(self.clock.now, seconds)

    def open_breaker(self, name: str) -> None:
        t = self.tracker(name)
        t.start(self.clock.now)
        t.failed(self.clock.now, FailureKind.UNAVAILABLE)
        assert not t.admits(self.clock.now)

    def run(self, hops: Sequence[Hop], outcomes: Sequence[BackendError | Refusal | None], priority: int = NORMAL,
            deadline_at: float | None = None, overflow: int = CRITICAL) -> tuple[list[Call | Wait], Any]:
        """Walk ``hops``, answering the steps with ``outcomes`` in turn: (the steps, how the walk ended)."""
        steps: list[Call | Wait] = []
        gen = walk("m", hops, Ticket(priority), self.targets, self.budget, overflow, self.clock, self.counters,
                   deadline_at)
        answers = iter(outcomes)
        try:
            step = gen.send(None)
            while True:
                steps.append(step)
                step = gen.send(next(answers))
        except StopIteration as stop:
            return steps, stop.value


def fixed(capacity: int = 1, **kw: Any) -> TrackerSettings:
    return TrackerSettings(max_concurrency=capacity, **kw)


def err(kind: FailureKind) -> BackendError:
    return BackendError(kind, kind.value)


def called(steps: Sequence[Call | Wait]) -> list[tuple[str, str]]:
    return [(type(s).__name__, s.hop.backend) for s in steps]


# --- calls and fallbacks --------------------------------------------------------------------------------


def test_the_first_hop_with_a_free_slot_serves_and_nothing_else_is_called() -> None:
    lane = Fleet(a=fixed(), b=fixed())
    steps, end = lane.run([A, B], [None])
    assert steps == [Call(A, 100.0)]
    assert end == Served(A, 1)
    assert lane.counters.fallbacks == []


def test_a_retryable_failure_falls_back_to_the_next_hop_and_is_counted_with_its_reason() -> None:
    lane = Fleet(a=fixed(), b=fixed(), c=fixed())
    steps, end = lane.run([A, B, C], [err(FailureKind.UNAVAILABLE), err(FailureKind.THROTTLED), None])
    assert called(steps) == [("Call", "a"), ("Call", "b"), ("Call", "c")]
    assert end == Served(C, 3)
    assert lane.counters.fallbacks == [("m", "a", "b", "unavailable"), ("m", "b", "c", "throttled")]


def test_when_every_hop_fails_the_last_error_is_the_answer() -> None:
    lane = Fleet(a=fixed(), b=fixed())
    last = err(FailureKind.TIMEOUT)
    _steps, end = lane.run([A, B], [err(FailureKind.UNAVAILABLE), last])
    assert end == Failed("timeout", B, last)
    assert lane.counters.fallbacks == [("m", "a", "b", "unavailable")]  # none past the last hop


def test_a_failure_the_input_caused_is_not_retried_elsewhere() -> None:
    lane = Fleet(a=fixed(), b=fixed())
    bad = err(FailureKind.MODEL_ERROR)
    steps, end = lane.run([A, B], [bad])
    assert called(steps) == [("Call", "a")]
    assert end == Failed("model_error", A, bad)


def test_a_fallback_is_paid_from_the_retry_budget_and_none_is_made_once_it_is_empty() -> None:
    lane = Fleet(budget=RetryBudget(0.0, burst=1.0), a=fixed(), b=fixed())
    steps, end = lane.run([A, B], [err(FailureKind.UNAVAILABLE), None])
    assert end == Served(B, 2)  # the one token
    first = err(FailureKind.UNAVAILABLE)
    steps, end = lane.run([A, B], [first])
    assert called(steps) == [("Call", "a")]
    assert end == Failed("unavailable", A, first)
    assert lane.counters.exhausted == ["m"]


def test_the_first_call_costs_no_retry_token() -> None:
    lane = Fleet(budget=RetryBudget(0.0, burst=1.0), a=fixed(), b=fixed())
    for _ in range(3):
        assert lane.run([A], [None])[1] == Served(A, 1)
    assert lane.run([A, B], [err(FailureKind.UNAVAILABLE), None])[1] == Served(B, 2)


def test_every_request_deposits_into_the_retry_budget() -> None:
    lane = Fleet(budget=RetryBudget(0.5, burst=1.0), a=fixed(), b=fixed())
    assert lane.run([A, B], [err(FailureKind.UNAVAILABLE), None])[1] == Served(B, 2)  # 1 + 0.5 capped at 1
    assert lane.run([A, B], [err(FailureKind.UNAVAILABLE)])[1].reason == "unavailable"  # 0.5: none
    assert lane.run([A, B], [err(FailureKind.UNAVAILABLE), None])[1] == Served(B, 2)  # 0.5 + 0.5


def test_a_hop_whose_breaker_is_open_is_skipped() -> None:
    lane = Fleet(a=fixed(breaker_failures=1, breaker_probe_share=0.0), b=fixed())
    lane.open_breaker("a")
    steps, end = lane.run([A, B], [None])
    assert called(steps) == [("Call", "b")]
    assert end == Served(B, 1)
    assert lane.counters.fallbacks == [("m", "a", "b", "breaker_open")]


def test_with_every_breaker_open_the_request_fails_breaker_open_at_the_last_hop() -> None:
    lane = Fleet(a=fixed(breaker_failures=1, breaker_probe_share=0.0),
                 b=fixed(breaker_failures=1, breaker_probe_share=0.0))
    lane.open_breaker("a")
    lane.open_breaker("b")
    steps, end = lane.run([A, B], [])
    assert steps == []
    assert end == Failed("breaker_open", B)


def test_a_model_without_sync_hops_fails_with_no_hop() -> None:
    lane = Fleet()
    assert lane.run([], []) == ([], Failed("breaker_open", None))


# --- deadlines ------------------------------------------------------------------------------------------


def test_a_request_whose_deadline_has_come_calls_no_backend() -> None:
    lane = Fleet(a=fixed())
    steps, end = lane.run([A], [], deadline_at=100.0)
    assert steps == []
    assert (end.reason, end.hop) == ("deadline", None)
    assert end.error is not None
    assert end.error.kind is FailureKind.TIMEOUT
    assert end.error.message == "the deadline passed before a backend answered"


def test_no_fallback_is_called_once_the_deadline_has_passed() -> None:
    lane = Fleet(a=fixed(), b=fixed())
    first = err(FailureKind.UNAVAILABLE)

    def late() -> BackendError:
        lane.clock.now = 100.5
        return first

    steps = []
    gen = walk("m", [A, B], Ticket(NORMAL), lane.targets, lane.budget, CRITICAL, lane.clock, lane.counters, 100.5)
    steps.append(gen.send(None))
    with pytest.raises(StopIteration) as stop:
        steps.append(gen.send(late()))
    assert called(steps) == [("Call", "a")]
    assert stop.value.value == Failed("unavailable", A, first)


def test_a_cold_backend_is_skipped_when_its_cold_start_alone_would_outlast_the_deadline() -> None:
    cold = fixed(serverless=True, cold_start_s=5.0)
    lane = Fleet(c=cold, a=fixed())
    steps, _end = lane.run([C, A], [None], deadline_at=105.0)
    assert called(steps) == [("Call", "a")]
    assert lane.counters.fallbacks == [("m", "c", "a", "cold_start")]
    steps, _end = lane.run([C, A], [None], deadline_at=105.5)
    assert called(steps) == [("Call", "c")]
    steps, _end = lane.run([C, A], [None])  # no deadline: a cold start is worth waiting for
    assert called(steps) == [("Call", "c")]


def test_a_warm_serverless_backend_is_called_whatever_its_cold_start() -> None:
    lane = Fleet(c=fixed(serverless=True, cold_start_s=5.0))
    lane.answered("c", 0.1)
    steps, _end = lane.run([C], [None], deadline_at=101.0)
    assert called(steps) == [("Call", "c")]


# --- waiting for a slot ---------------------------------------------------------------------------------


def test_when_no_hop_has_a_free_slot_the_request_waits_at_the_first_and_then_calls_it() -> None:
    lane = Fleet(a=fixed(), b=fixed())
    lane.fill("a")
    lane.fill("b")
    steps, end = lane.run([A, B], [None, None])
    assert steps == [Wait(A, 100.0, 1.0), Call(A, 100.0)]
    assert end == Served(A, 1)
    assert lane.counters.fallbacks == [("m", "a", "b", "saturated")]


def test_a_granted_slot_whose_call_fails_ends_the_walk_with_that_error() -> None:
    lane = Fleet(a=fixed())
    lane.fill("a")
    bad = err(FailureKind.UNAVAILABLE)
    _steps, end = lane.run([A], [None, bad])
    assert end == Failed("unavailable", A, bad)


def test_a_hop_with_a_free_slot_is_called_before_waiting_at_a_full_one() -> None:
    lane = Fleet(a=fixed(), b=fixed())
    lane.fill("a")
    steps, end = lane.run([A, B], [None])
    assert steps == [Call(B, 100.0)]
    assert end == Served(B, 1)


def test_after_a_failure_the_wait_for_a_full_hop_is_a_retry_paid_from_the_budget() -> None:
    lane = Fleet(budget=RetryBudget(0.0, burst=1.0), a=fixed(), b=fixed())
    lane.fill("a")
    first = err(FailureKind.UNAVAILABLE)
    steps, end = lane.run([A, B], [first, None, None])
    assert called(steps) == [("Call", "b"), ("Wait", "a"), ("Call", "a")]
    assert end == Served(A, 2)
    steps, end = lane.run([A, B], [first])  # the token is spent
    assert called(steps) == [("Call", "b")]
    assert end == Failed("unavailable", B, first)
    assert lane.counters.exhausted == ["m"]


def test_a_slot_freed_while_the_walk_went_on_is_taken_without_waiting() -> None:
    lane = Fleet(a=fixed(), b=fixed())
    lane.fill("a")
    gen = walk("m", [A, B], Ticket(NORMAL), lane.targets, lane.budget, CRITICAL, lane.clock, lane.counters)
    assert gen.send(None) == Call(B, 100.0)
    lane.tracker("a").succeeded(100.0, 0.1)  # a's call ends while b's is under way
    assert gen.send(err(FailureKind.UNAVAILABLE)) == Call(A, 100.0)
    with pytest.raises(StopIteration) as stop:
        gen.send(None)
    assert stop.value.value == Served(A, 2)


def test_the_wait_is_at_most_max_wait_or_the_deadline_less_the_service_time() -> None:
    lane = Fleet(a=fixed())
    lane.answered("a", 0.1)
    lane.fill("a")
    steps, _ = lane.run([A], [None, None], deadline_at=100.6)
    assert steps[0] == Wait(A, 100.0, pytest.approx(0.5))


def test_a_request_whose_predicted_wait_exceeds_its_budget_fails_at_once_with_it_as_retry_after() -> None:
    # a serverless backend with no call finished predicts one cold start per round of slots
    lane = Fleet(c=fixed(serverless=True, cold_start_s=0.8))
    lane.fill("c")
    steps, end = lane.run([C], [], deadline_at=100.9)  # budget 0.9: a deadline keeps a 20% margin
    assert steps == []
    assert end == Failed("wait_exceeds_deadline", C, retry_after_s=0.8)
    assert lane.rejections.reasons == [("c", "wait_exceeds_deadline")]
    steps, end = lane.run([C], [None, None], deadline_at=101.0)  # 0.8 of 1.0: just fits
    assert steps[0] == Wait(C, 100.0, 1.0)


def test_without_a_deadline_the_wait_may_fill_all_of_max_wait() -> None:
    lane = Fleet(c=fixed(serverless=True, cold_start_s=1.0))
    lane.fill("c")
    steps, end = lane.run([C], [None, None])
    assert steps[0] == Wait(C, 100.0, 1.0)
    lane = Fleet(c=fixed(serverless=True, cold_start_s=1.01))
    lane.fill("c")
    steps, end = lane.run([C], [])
    assert end.reason == "wait_exceeds_deadline"


def test_a_request_whose_deadline_leaves_no_time_to_wait_does_not_wait() -> None:
    lane = Fleet(a=fixed())
    lane.answered("a", 0.5)
    lane.fill("a")
    steps, end = lane.run([A], [], deadline_at=100.5)  # its service time alone reaches the deadline
    assert steps == []
    assert end.reason == "wait_exceeds_deadline"


def test_the_retry_after_of_a_wait_too_long_is_capped() -> None:
    lane = Fleet(c=fixed(serverless=True, cold_start_s=100.0))
    lane.fill("c")
    _, end = lane.run([C], [])
    assert end.retry_after_s == RETRY_AFTER_MAX_S


def test_the_predicted_wait_is_this_requests_own_by_urgency_tenant_and_deadline() -> None:
    lane = Fleet(a=fixed())
    lane.answered("a", 0.1)  # 10 calls a second
    lane.fill("a")
    door = lane.targets["a"].admission
    for _ in range(12):
        assert door.enqueue(Waiter(NORMAL, "x", arrival=100.0), 100.0)

    def waits(ticket: Ticket, deadline_at: float | None = None) -> bool:
        gen = walk("m", [A], ticket, lane.targets, lane.budget, CRITICAL, lane.clock, lane.counters, deadline_at)
        try:
            return type(next(gen)) is Wait
        except StopIteration:  # refused at once
            return False

    assert not waits(Ticket(NORMAL, "x"))  # behind its own 12: 1.3 s, more than max_wait
    assert waits(Ticket(HIGH, "x"))  # ahead of all of them
    assert waits(Ticket(NORMAL, "y"))  # another tenant: its turn comes after one of x's
    assert waits(Ticket(NORMAL, "x"), deadline_at=100.9)  # its deadline comes before theirs


def test_a_hop_whose_predicted_wait_is_too_long_passes_the_request_to_the_next_full_hop() -> None:
    lane = Fleet(c=fixed(serverless=True, cold_start_s=5.0), a=fixed())
    lane.fill("c")
    lane.fill("a")
    steps, end = lane.run([C, A], [None, None])
    assert steps == [Wait(A, 100.0, 1.0), Call(A, 100.0)]
    assert end == Served(A, 1)


def test_a_full_queue_at_the_first_hop_sends_the_request_to_wait_at_the_next() -> None:
    lane = Fleet(a=fixed(), b=fixed())
    lane.fill("a")
    lane.fill("b")
    steps, end = lane.run([A, B], [Refusal("full", 2.0), None, None])
    assert called(steps) == [("Wait", "a"), ("Wait", "b"), ("Call", "b")]
    assert end == Served(B, 1)


@pytest.mark.parametrize("reason", ["timeout", "evicted"])
def test_a_request_that_waited_in_vain_does_not_wait_again(reason: str) -> None:
    lane = Fleet(a=fixed(), b=fixed())
    lane.fill("a")
    lane.fill("b")
    steps, end = lane.run([A, B], [Refusal(reason, 2.5)])
    assert called(steps) == [("Wait", "a")]
    assert end == Failed(reason, A, retry_after_s=2.5)


def test_the_last_refusal_is_the_answer_when_no_full_hop_took_the_request() -> None:
    lane = Fleet(a=fixed(), b=fixed())
    lane.fill("a")
    lane.fill("b")
    _steps, end = lane.run([A, B], [Refusal("full", 2.0), Refusal("breaker_open", 3.0)])
    assert end == Failed("breaker_open", B, retry_after_s=3.0)


def test_a_client_gone_while_waiting_ends_the_walk_even_for_an_urgent_request() -> None:
    lane = Fleet(a=fixed())
    lane.fill("a")
    steps, end = lane.run([A], [Refusal("client_gone")], priority=CRITICAL)
    assert called(steps) == [("Wait", "a")]
    assert end == Failed("client_gone", A)


def test_backends_that_can_predict_a_wait_are_waited_for_before_one_still_cold() -> None:
    lane = Fleet(c=fixed(serverless=True, cold_start_s=0.1), a=fixed(), b=fixed())
    for name in ("a", "b"):
        lane.answered(name, 0.1)
        lane.fill(name)
    lane.fill("c")
    steps, _end = lane.run([C, A, B], [Refusal("full"), Refusal("full"), None, None])
    assert called(steps) == [("Wait", "a"), ("Wait", "b"), ("Wait", "c"), ("Call", "c")]


# --- overflow -------------------------------------------------------------------------------------------


def test_an_urgent_request_refused_for_capacity_goes_over_the_first_full_hops_limit() -> None:
    lane = Fleet(c=fixed(serverless=True, cold_start_s=100.0), a=fixed())
    lane.answered("a", 100.0)
    lane.fill("c")
    lane.fill("a")
    steps, end = lane.run([C, A], [None], priority=CRITICAL)
    assert steps == [Call(C, 100.0, over_limit=True)]
    assert end == Served(C, 1)
    bad = err(FailureKind.UNAVAILABLE)
    assert lane.run([C, A], [bad], priority=CRITICAL)[1] == Failed("unavailable", C, bad)


def test_no_overflow_to_a_backend_whose_breaker_opened_while_the_request_waited() -> None:
    lane = Fleet(a=fixed(breaker_failures=1, breaker_probe_share=0.0), b=fixed())
    lane.fill("a")
    lane.fill("b")
    gen = walk("m", [A, B], Ticket(CRITICAL), lane.targets, lane.budget, CRITICAL, lane.clock, lane.counters)
    assert gen.send(None) == Wait(A, 100.0, 1.0)
    lane.tracker("a").failed(100.0, FailureKind.UNAVAILABLE)  # a call in flight fails: a's breaker opens
    assert gen.send(Refusal("breaker_open")) == Wait(B, 100.0, 1.0)
    with pytest.raises(StopIteration) as stop:
        gen.send(Refusal("full", 2.0))
    assert stop.value.value == Failed("full", B, retry_after_s=2.0)


def test_below_the_overflow_urgency_a_request_refused_for_capacity_fails() -> None:
    lane = Fleet(c=fixed(serverless=True, cold_start_s=100.0))
    lane.fill("c")
    steps, end = lane.run([C], [], priority=HIGH)
    assert steps == []
    assert end.reason == "wait_exceeds_deadline"


def test_no_overflow_after_the_deadline_nor_to_a_backend_whose_breaker_is_open() -> None:
    lane = Fleet(a=fixed(breaker_failures=1, breaker_probe_share=0.0))
    lane.fill("a")
    steps, end = lane.run([A], [], priority=CRITICAL, deadline_at=100.0)
    assert steps == []
    assert end.reason == "wait_exceeds_deadline"
    lane.tracker("a").failed(100.0, FailureKind.UNAVAILABLE)  # one of the calls in flight: the breaker opens
    lane.fill("a")
    assert lane.run([A], [], priority=CRITICAL)[1] == Failed("breaker_open", A)


def test_an_urgent_request_after_a_failed_call_gets_that_error_not_an_overflow_call() -> None:
    lane = Fleet(budget=RetryBudget(0.0, burst=1.0), a=fixed(), b=fixed())
    lane.fill("b")
    assert lane.budget.withdraw()  # another request's retry took the one token
    first = err(FailureKind.UNAVAILABLE)
    steps, end = lane.run([A, B], [first], priority=CRITICAL)
    assert called(steps) == [("Call", "a")]
    assert end == Failed("unavailable", A, first)


# --- after a failed walk --------------------------------------------------------------------------------


JOB = Hop(Lane.ASYNC, "jobs")
DEFERRAL = Hop(Lane.BATCH, "batch")


def test_a_failed_sync_walk_becomes_a_job_on_the_routes_job_hop() -> None:
    assert job_after_failure("unavailable", err(FailureKind.UNAVAILABLE), JOB, lambda: DEFERRAL) == JOB
    assert job_after_failure("saturated", None, JOB, lambda: DEFERRAL) == JOB


def test_without_a_job_hop_only_a_refusal_for_capacity_is_deferred() -> None:
    for reason in ("saturated", "full", "evicted", "timeout", "wait_exceeds_deadline"):
        assert job_after_failure(reason, None, None, lambda: DEFERRAL) == DEFERRAL
    for reason in ("breaker_open", "client_gone", "deadline"):
        assert job_after_failure(reason, None, None, lambda: DEFERRAL) is None
    assert job_after_failure("timeout", None, None, lambda: None) is None


def test_an_input_the_backend_refused_never_becomes_a_job() -> None:
    assert job_after_failure("model_error", err(FailureKind.MODEL_ERROR), JOB, lambda: DEFERRAL) is None
