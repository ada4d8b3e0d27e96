"""The contracts: what a request looks like to a policy, what a policy answers, what a backend does.

Everything in the router depends on this module; it depends on nothing of the router's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType
from typing import NamedTuple, Protocol, runtime_checkable


class Lane(StrEnum):
    """How a request is served. ``SHED`` is not a lane of a model: it is the decision to reject."""

    REALTIME = "realtime"
    SERVERLESS = "serverless"
    ASYNC = "async"
    BATCH = "batch"
    SHED = "shed"


SYNC_LANES: tuple[Lane, ...] = (Lane.REALTIME, Lane.SERVERLESS)
MODEL_LANES: tuple[Lane, ...] = (Lane.REALTIME, Lane.SERVERLESS, Lane.ASYNC, Lane.BATCH)
JOB_LANES: frozenset[Lane] = frozenset({Lane.ASYNC, Lane.BATCH})  # answered 202 + a job


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_OPEN = BreakerState.OPEN  # enum reads cost ~0.1 µs each in Python 3.11


class RequestFeatures(NamedTuple):
    """What the router knows about one request before choosing a lane. Built from headers only.

    The per-request records are NamedTuples: immutable like frozen dataclasses, three times cheaper to build.
    """

    model: str
    caller: str  # the tenant of a known API key, else "anonymous"
    payload_bytes: int
    content_type: str
    urgency: str  # a level name from the config, after the caller's clamp
    priority: int  # the level's number: higher is more urgent
    deadline_ms: int | None = None  # the client's remaining budget, from X-Deadline-Ms
    accepts_async: bool = False  # Prefer: respond-async
    wait_s: float | None = None  # Prefer: wait=N
    key: int = 0  # a hash of the request's id: lets a policy split traffic deterministically (weighted)


class BackendState(NamedTuple):
    """One backend as the tracker sees it at one instant."""

    name: str
    inflight: int
    capacity: int  # current concurrency limit: learned (auto) or the configured one, lowered on throttling
    max_capacity: int  # the most it can be: the configured integer, or the adaptive limit's max
    saturation: float  # 0..1; 1 when the breaker is open
    latency_s: float  # EWMA of successful calls; 0 until the first one
    error_rate: float  # EWMA of failures, 0..1
    breaker: BreakerState
    serverless: bool = False
    cold: bool = False  # serverless only: idle past its window, the next call pays a cold start
    cold_start_s: float = 0.0  # expected extra time of a cold call (configured, then learned)
    queue_depth: int = 0  # requests waiting for a slot of this backend (its admission queue)
    reported_utilization: float | None = None  # the backend's own ORCA load report (fresh ones only), 0..1+
    queue_levels: tuple[tuple[int, int], ...] = ()  # (priority, waiting) per level that waits, most urgent first

    @property
    def available(self) -> bool:
        """Whether a call could be made now without exceeding the capacity or hitting an open breaker."""
        return self.breaker is not _OPEN and self.inflight < self.capacity and not self.queue_depth

    def wait_for(self, priority: int) -> float:
        """Predicted queue wait of a request of ``priority`` arriving now: 0 with a free slot and nobody
        waiting, else one slot's turn (latency / capacity) per waiter at its level or above, plus its own."""
        if not self.queue_depth and self.inflight < self.capacity:
            return 0.0
        ahead = 0
        for level, waiting in self.queue_levels:
            if level < priority:
                break
            ahead += waiting
        return (ahead + 1) * self.latency_s / max(1, self.capacity)

    @property
    def expected_wait_s(self) -> float:
        """Predicted queue wait of a request behind everyone waiting now (the least urgent's wait)."""
        if not self.queue_depth and self.inflight < self.capacity:
            return 0.0
        return (self.queue_depth + 1) * self.latency_s / max(1, self.capacity)

    def latency_for(self, priority: int) -> float:
        """Latency a new call of ``priority`` should expect: its queue wait, a cold start if cold, service time."""
        extra = self.cold_start_s if self.cold else 0.0
        return self.latency_s + extra + self.wait_for(priority)

    @property
    def expected_latency_s(self) -> float:
        """Latency a new call should expect: service time, a cold start if cold, the wait behind the queue."""
        extra = self.cold_start_s if self.cold else 0.0
        return self.latency_s + extra + self.expected_wait_s


class Snapshot(NamedTuple):
    """The backends as seen by one model: the states of its lanes' backends plus its lane table."""

    backends: Mapping[str, BackendState]  # the backends of this model's lanes
    lanes: Mapping[Lane, str]  # this model's lane -> backend name
    limits: Mapping[Lane, int] = MappingProxyType({})  # lane -> max payload bytes
    taken_at: float = 0.0

    def lane(self, lane: Lane) -> BackendState | None:
        """The state of the backend serving ``lane`` for this model, or None if the model has no such lane."""
        name = self.lanes.get(lane)
        return None if name is None else self.backends.get(name)


@dataclass(frozen=True, slots=True)
class Decision:
    """A policy's answer. ``backend`` None means the model's backend for ``lane``.

    ``reason`` is a low-cardinality code: it becomes a metric label.
    """

    lane: Lane
    reason: str
    backend: str | None = None
    fallback: tuple[Lane, ...] = ()
    policy: str = ""
    retry_after_s: float | None = None  # for SHED
    status: int = 429  # for SHED: 429 (load shed) or 503 (cannot be served in time)
    deferred_from: str | None = None  # set by the engine: the reason of the shed this job lane replaced


@dataclass(frozen=True, slots=True)
class Hop:
    """One step of a resolved route."""

    lane: Lane
    backend: str


@dataclass(frozen=True, slots=True)
class Route:
    """A decision after the engine resolved and checked it: what the dispatcher executes."""

    decision: Decision
    hops: tuple[Hop, ...]  # primary first, then the fallback chain; empty when shed


class Policy(Protocol):
    """A routing policy: pure and synchronous, no I/O. Return None to abstain."""

    name: str

    def decide(self, req: RequestFeatures, snap: Snapshot) -> Decision | None: ...


# --- backends -------------------------------------------------------------------------------------


class FailureKind(StrEnum):
    """Why a backend call failed; decides fallback, the tracker update and the client's error."""

    THROTTLED = "throttled"  # HTTP 429 / SageMaker ThrottlingException: slow down (AIMD)
    NOT_READY = "not_ready"  # SageMaker ModelNotReadyException: cold serverless capacity
    UNAVAILABLE = "unavailable"  # 502/503/504, SageMaker ServiceUnavailable
    SERVER_ERROR = "server_error"  # other 5xx from the model server
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    MODEL_ERROR = "model_error"  # the model rejected this input (4xx, SageMaker ModelError): not retried
    VALIDATION = "validation"  # the backend refused the call itself (SageMaker ValidationError)


RETRYABLE: frozenset[FailureKind] = frozenset(
    {
        FailureKind.THROTTLED,
        FailureKind.NOT_READY,
        FailureKind.UNAVAILABLE,
        FailureKind.SERVER_ERROR,
        FailureKind.TIMEOUT,
        FailureKind.CONNECTION,
    }
)
# The name a client sees for each kind, in a sync answer's x-amzn-ErrorType and in a failed job's error type:
# SageMaker Runtime's own names, so one vocabulary (and one casing) covers both.
ERROR_TYPES: Mapping[FailureKind, str] = MappingProxyType({
    FailureKind.THROTTLED: "ThrottlingException",
    FailureKind.NOT_READY: "ModelNotReadyException",
    FailureKind.UNAVAILABLE: "ServiceUnavailable",
    FailureKind.CONNECTION: "ServiceUnavailable",
    FailureKind.SERVER_ERROR: "ModelError",
    FailureKind.TIMEOUT: "ModelError",
    FailureKind.MODEL_ERROR: "ModelError",
    FailureKind.VALIDATION: "ValidationError",
})
# Failures that say the backend is unhealthy, as opposed to busy or unhappy with this input.
BREAKER_FAILURES: frozenset[FailureKind] = frozenset(
    {FailureKind.UNAVAILABLE, FailureKind.SERVER_ERROR, FailureKind.TIMEOUT, FailureKind.CONNECTION}
)


@dataclass(frozen=True, slots=True)
class Invocation:
    """One call to a model, independent of transport."""

    body: bytes
    content_type: str | None = None
    accept: str | None = None
    custom_attributes: str | None = None
    target_variant: str | None = None
    inference_id: str | None = None
    path: str | None = None  # path and query as received, for extra paths forwarded to http backends
    timeout_s: float | None = None  # at most this long, on top of the backend's own timeout
    job_timeout_s: float | None = None  # a job's budget: replaces the backend's (sync) timeout
    headers: Mapping[str, str] = field(default_factory=dict)  # extra headers to pass (e.g. traceparent)
    # A payload sent as it is read (``body`` is then empty): a large job payload from storage, or a client's body
    # on its way in. Called once per attempt.
    stream: Callable[[], AsyncIterator[bytes]] | None = None
    size: int | None = None  # the streamed payload's length
    # Set for a request forwarded as it came (a model's extra paths): its method, and in ``forward_headers`` its
    # end-to-end headers (hop-by-hop and the router's own removed). None: an InvokeEndpoint-style call.
    method: str | None = None
    forward_headers: Sequence[tuple[str, str]] = ()
    # InvokeEndpointWithResponseStream: the answer comes back as a stream, returned once its first byte is here
    response_stream: bool = False


class CallerGone(Exception):
    """The client went away (disconnected, or stopped reading): a call cut short for it is nobody's failure."""


class StreamBroken(Exception):
    """A streamed answer broke off mid-way. ``code`` is SageMaker's ModelStreamError ErrorCode
    (``StreamBroken``, ``ModelInvocationTimeExceeded``...) or ``InternalStreamFailure``."""

    def __init__(self, kind: FailureKind, code: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message


class AnswerStream(Protocol):
    """An answer's body still arriving from the backend, read once to its end; ``aclose`` releases it early."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


async def whole_body(inv: Invocation) -> Invocation:
    """``inv`` with a streamed payload read into ``body``, for transports that need the bytes up front."""
    if inv.stream is None:
        return inv
    return replace(inv, body=b"".join([chunk async for chunk in inv.stream()]), stream=None)


@dataclass(frozen=True, slots=True)
class InvocationResult:
    body: bytes
    content_type: str | None = None
    status: int = 200
    invoked_variant: str | None = None
    custom_attributes: str | None = None
    content_encoding: str | None = None  # the body's encoding (gzip...), forwarded to a client that accepted it
    load_metrics: str | None = None  # the backend's ORCA load report (endpoint-load-metrics header), if it sent one
    # A forwarded answer's end-to-end headers as they came (hop-by-hop removed), ready for ASGI; None for an
    # InvokeEndpoint-style result, whose headers the router builds from the fields above.
    headers: Sequence[tuple[bytes, bytes]] | None = None
    # The body as it arrives (``body`` is then empty): read it to the end, or ``aclose`` it. The call's slot
    # stays taken until then.
    stream: AnswerStream | None = None


class BackendError(Exception):
    """A failed backend call. ``status`` is the upstream's HTTP status, where there was one."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        original_status: int | None = None,
        original_message: str | None = None,
        answer: InvocationResult | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.original_status = original_status
        self.original_message = original_message
        self.answer = answer  # the upstream's own error answer, for a forwarded request to pass on unchanged

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE


@runtime_checkable
class Backend(Protocol):
    """A place a model runs. ``invoke`` returns the model's answer or raises ``BackendError``."""

    name: str

    async def start(self) -> None: ...

    async def invoke(self, inv: Invocation) -> InvocationResult: ...

    async def close(self) -> None: ...
