"""The YAML config as pydantic models, and the loader that reports every error with file:line:col."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path as FsPath
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    SecretStr,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from router.numbers import parse_uint
from router.protocols import (
    CONTROL_METHODS,
    INFERENCE_METHODS,
    PROTOCOLS,
    HttpMethod,
    PathRule,
    ProtocolName,
    pattern_problem,
    preset_rules,
)
from router.types import MODEL_LANES, SYNC_LANES, Lane
from router.units import parse_duration, parse_size
from router.yamlpos import ConfigError, ConfigIssue, Located, Path, decode_text, format_path, load_located

Size = Annotated[int, BeforeValidator(parse_size)]
Duration = Annotated[float, BeforeValidator(parse_duration)]
ModelLane = Literal["realtime", "serverless", "async", "batch"]

# SageMaker's documented payload limits; http backends get the same defaults so a model can move.
DEFAULT_LIMITS: dict[Lane, int] = {
    Lane.REALTIME: 6_000_000,
    Lane.SERVERLESS: 4_000_000,
    Lane.ASYNC: 1_000_000_000,
    Lane.BATCH: 100_000_000,
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Strict):
    listen: str = "127.0.0.1:8080"
    max_body: Size = parse_size("1GiB")  # hard cap on any request body, before per-lane limits
    admin_token: SecretStr | None = None  # admin endpoints answer 403 until one is set
    api_key_header: str = "X-Api-Key"
    access_log: bool = True  # one JSON line per request
    log_format: Literal["auto", "json", "console"] = "auto"
    # On SIGTERM /readyz turns 503 at once, the listener keeps serving for drain_delay (load balancers
    # notice), then closes; requests in flight get drain_timeout to finish, then running jobs jobs.drain_timeout.
    drain_delay: Duration = 5.0
    drain_timeout: Duration = 30.0
    # Connection limits (router/api/limits.py); the README's "Operating" section gives the reasons.
    max_header_bytes: Size = Field(64 * 1024, ge=1024)  # request line + headers; 431 beyond
    header_timeout: Duration = Field(10.0, gt=0)  # a request's head must arrive within this; 408
    body_timeout: Duration = Field(10.0, gt=0)  # a body's grace period and longest pause; 408
    min_body_rate: Size = 1000  # bytes/s a body must average after body_timeout; 408
    keepalive_timeout: Duration = Field(75.0, gt=0)  # idle keep-alive connections are closed after this
    max_connections: int = Field(4096, ge=1, le=1_000_000)  # open connections; one more gets 503 and is closed

    @field_validator("listen")
    @classmethod
    def _listen_has_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        number = parse_uint(port, max_digits=5)
        if not sep or not host or number is None or not 0 <= number < 65536:
            raise ValueError(f"listen must be HOST:PORT, got {value!r}")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class LocalStateConfig(Strict):
    """Embedded default: SQLite (WAL) for jobs and the queue, a local folder for payloads and results."""

    kind: Literal["local"] = "local"
    path: str = "./var"


class AwsStateConfig(Strict):
    """Scale-out: payloads, results and job records in S3; the work queue in SQS (with a redrive DLQ)."""

    kind: Literal["aws"]
    bucket: str = Field(min_length=3, max_length=63)
    prefix: str = ""
    queue_url: str = Field(pattern=r"^https?://")
    dlq_url: str | None = None
    region: str | None = None
    endpoint_url: str | None = None  # an emulator or a VPC endpoint
    # The batch lane's buffer: a queue of its own (batch jobs wait there until a replica batches them).
    batch_queue_url: str | None = Field(None, pattern=r"^https?://")
    batch_dlq_url: str | None = None


StateConfig = Annotated[LocalStateConfig | AwsStateConfig, Field(discriminator="kind")]


class JobsConfig(Strict):
    """How the async lane runs jobs in this process."""

    workers: int = Field(4, ge=0, le=1000)  # 0: this replica accepts jobs but does not run them
    lease: Duration = 60.0  # extended while a job runs; a crashed worker's jobs are picked up after it
    max_attempts: int = Field(3, ge=1, le=100)
    ttl: Duration = 6 * 3600.0  # SageMaker's RequestTTLSeconds default: unfinished jobs then expire
    invocation_timeout: Duration = 15 * 60.0  # SageMaker's InvocationTimeoutSeconds default
    backoff: Duration = 1.0  # first retry delay; doubles per attempt, with jitter
    max_backoff: Duration = 60.0
    poll_interval: Duration = 0.2  # how often an idle worker looks for work
    drain_timeout: Duration = 30.0  # on stop: running jobs may finish for this long, the rest go back
    # A result (or a job's outcome) that storage refuses is retried this long, the model never called again;
    # then the job fails with a StorageError. /readyz is 503 while the lane's storage keeps failing.
    storage_retry: Duration = 300.0
    # Finished jobs (records, payloads, results) are deleted this long after they ended; 0 keeps them.
    # Embedded state only: on S3 give the bucket a lifecycle rule instead.
    retention: Duration = Field(7 * 86400.0, ge=0)


class UrgencyConfig(Strict):
    header: str = "X-Urgency"
    levels: dict[str, int] = Field(default_factory=lambda: {"critical": 3, "high": 2, "normal": 1, "low": 0})
    default: str = "normal"
    # The highest level a caller without a known API key may claim; default: one below the top.
    anonymous_max: str | None = None

    @model_validator(mode="after")
    def _levels_known(self) -> UrgencyConfig:
        if not self.levels:
            raise ValueError("levels must name at least one urgency level")
        for field_name in ("default", "anonymous_max"):
            value = getattr(self, field_name)
            if value is not None and value not in self.levels:
                raise ValueError(f"{field_name} {value!r} is not one of the levels {sorted(self.levels)}")
        return self

    @property
    def anonymous_ceiling(self) -> int:
        if self.anonymous_max is not None:
            return self.levels[self.anonymous_max]
        ranked = sorted(set(self.levels.values()))
        return ranked[-2] if len(ranked) > 1 else ranked[-1]


class CallerConfig(Strict):
    """A known caller, identified by an API key (``X-Api-Key``) or by SigV4 (the access key id of an SDK client's
    signature, checked with its secret), or both."""

    api_key: SecretStr | None = Field(None, min_length=8)
    aws_access_key_id: str | None = Field(None, pattern=r"^[A-Za-z0-9]{16,128}$")
    aws_secret_access_key: SecretStr | None = Field(None, min_length=16)
    tenant: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    max_urgency: str | None = None  # default: any level
    # Share of a full backend's slots against other tenants of the same urgency (anonymous callers: 1).
    weight: float = Field(1.0, gt=0.0, le=1000.0)

    @model_validator(mode="after")
    def _identified(self) -> CallerConfig:
        if (self.aws_access_key_id is None) != (self.aws_secret_access_key is None):
            raise ValueError("aws_access_key_id and aws_secret_access_key go together")
        if self.api_key is None and self.aws_access_key_id is None:
            raise ValueError("a caller needs an api_key, or an aws_access_key_id with its aws_secret_access_key")
        return self


class BreakerConfig(Strict):
    """Opens on a failure rate over a window (with a minimum volume) or a run of consecutive failures."""

    failures: int = Field(10, ge=1)  # consecutive failures that open it at once (a dead backend)
    failure_rate: float = Field(0.8, gt=0.0, le=1.0)  # ...or this share of calls failing over `window`
    min_requests: int = Field(20, ge=1)  # ...once the window holds at least this many calls
    window: Duration = Field(10.0, gt=0.0)
    open_for: Duration = 10.0  # then one probe at a time as well (half-open)
    probe_share: float = Field(0.1, ge=0.0, le=1.0)  # while open, this share of requests still probes it


class AdaptiveConcurrencyConfig(Strict):
    """``max_concurrency: auto`` (these defaults) or ``{initial, min, max}``: the limit is learned."""

    initial: int = Field(4, ge=1, le=10_000)
    min: int = Field(1, ge=1, le=10_000)
    max: int = Field(1000, ge=1, le=10_000)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveConcurrencyConfig:
        if not self.min <= self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        if not self.min <= self.initial <= self.max:
            raise ValueError(f"initial ({self.initial}) must be between min ({self.min}) and max ({self.max})")
        return self


def _concurrency_form(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("max_concurrency must be auto, an integer or {initial, min, max}, not a boolean")
    if isinstance(value, str) and value.strip().lower() == "auto":
        return {}
    if isinstance(value, str) and not value.strip().isdecimal():
        raise ValueError(f"max_concurrency must be auto, an integer or {{initial, min, max}}, got {value!r}")
    return value


def _concurrency_kind(value: Any) -> str:
    return "adaptive" if isinstance(value, dict | AdaptiveConcurrencyConfig) else "fixed"


MaxConcurrency = Annotated[
    Annotated[Annotated[int, Field(ge=1, le=10_000)], Tag("fixed")]
    | Annotated[AdaptiveConcurrencyConfig, Tag("adaptive")],
    Discriminator(_concurrency_kind),
    BeforeValidator(_concurrency_form),
]


class ServerlessConfig(Strict):
    idle_after: Duration = 600.0  # idle longer than this = cold
    cold_start: Duration = 5.0  # expected cold start until one is observed


class QueueConfig(Strict):
    """A full backend's admission queue: requests wait for a slot instead of failing."""

    max_depth: int = Field(1024, ge=0, le=1_000_000)  # waiters per backend; 0 turns queueing off
    max_wait: Duration = Field(1.0, ge=0.0, le=3600.0)  # the longest a request waits; its deadline may cut it


class CostConfig(Strict):
    """What a backend costs: for the live estimate (router_estimated_cost_dollars_total) and simulate/recommend.

    Real-time and async backends are billed by instance-hour, serverless ones (a ``serverless`` block) by
    GB-second, ``sagemaker-batch`` ones by the instance-hours of each job. Prices come from the shipped table
    (router/prices.json), the config's ``prices`` block, or ``hourly`` / ``gb_second`` here.
    """

    instance_type: str | None = Field(None, pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    hourly: float | None = Field(None, ge=0.0)  # $ per instance-hour; overrides the price table
    instances: int = Field(1, ge=0, le=1000)  # real-time: how many; async: the most it scales to
    memory_mb: int | None = Field(None, ge=1024, le=6144, multiple_of=1024)  # serverless MemorySizeInMB
    gb_second: float | None = Field(None, ge=0.0)  # serverless $ per GB-second; overrides the price table
    provisioned_concurrency: int = Field(0, ge=0, le=200)  # serverless: kept warm, billed while configured
    provisioned_gb_second: float | None = Field(None, ge=0.0)  # no default price: required with the above
    slots: int | None = Field(None, ge=1)  # calls one instance serves at once (a call's share of its time)


class AutoscaleConfig(Strict):
    """Simulated target-tracking autoscaling of a real-time or async backend's instances."""

    min: int = Field(1, ge=0, le=1000)
    max: int = Field(4, ge=1, le=1000)
    target: float = Field(0.7, gt=0.0, le=1.0)  # busy share of the slots it aims for
    interval: Duration = Field(60.0, gt=0.0)  # how often it decides
    delay: Duration = Field(300.0, ge=0.0)  # a new instance serves this long after the decision (billed from it)
    cooldown: Duration = Field(300.0, ge=0.0)  # at least this long between two scale-ins

    @model_validator(mode="after")
    def _ordered(self) -> AutoscaleConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class SimulateConfig(Strict):
    """How ``simulate`` and ``recommend`` model this backend's behaviour; live serving ignores it.

    Unset service times are learned from the trace (the durations of the backend's answered calls).
    """

    service_time: Duration | None = Field(None, gt=0.0)  # median time of one call
    service_p99: Duration | None = Field(None, gt=0.0)  # its 99th percentile (lognormal between the two)
    per_instance: int | None = Field(None, ge=1, le=10_000)  # calls one instance serves at once
    overload: Literal["refuse", "queue"] = "refuse"  # above its capacity: answer 503/429, or queue inside
    max_concurrency: int | None = Field(None, ge=1, le=10_000)  # serverless MaxConcurrency
    cold_start: Duration | None = None  # the real cold start (default: serverless.cold_start)
    idle_after: Duration | None = None  # the real idle timeout (default: serverless.idle_after)
    cold_starts: Literal["container", "endpoint"] = "container"  # one per new container, or one shared
    memory_speedup: float = Field(0.0, ge=0.0, le=1.0)  # service time x (memory_mb / new memory) ** this
    autoscale: AutoscaleConfig | None = None
    scale_to_zero_after: Duration = Field(600.0, ge=0.0)  # async: idle this long, instances go to 0
    startup: Duration = Field(300.0, ge=0.0)  # batch transform job start-up; async scale-up from zero
    per_record: Duration = Field(0.0, ge=0.0)  # batch: extra time per record of a batch call
    fail_rate: float = Field(0.0, ge=0.0, le=1.0)  # this share of calls fails with a 5xx


class _BackendBase(Strict):
    # A fixed integer (AIMD below it on throttling), or auto / {initial, min, max}: learned from latency.
    max_concurrency: MaxConcurrency = 8
    timeout: Duration = 60.0
    serverless: ServerlessConfig | None = None
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    cost: CostConfig | None = None
    simulate: SimulateConfig | None = None


class HttpBackendConfig(_BackendBase):
    """Any HTTP model server; ``url`` receives the SageMaker container contract's POST."""

    kind: Literal["http"]
    url: str

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+(/\S*)?$", value):
            raise ValueError(f"url must be an http:// or https:// URL, got {value!r}")
        return value

    headers: dict[str, SecretStr] = Field(default_factory=dict)  # static headers, e.g. the upstream's auth
    variant: str | None = None  # X-Amzn-Invoked-Production-Variant; default the backend's name


class SageMakerBackendConfig(_BackendBase):
    """A SageMaker real-time or serverless endpoint called through InvokeEndpoint."""

    kind: Literal["sagemaker"]
    endpoint: str = Field(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$", max_length=63)
    region: str | None = None
    endpoint_url: str | None = None  # a VPC endpoint or an emulator
    variant: str | None = None  # TargetVariant when the client names none


S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
MAX_TRANSFORM_PAYLOAD = 100 * 1024 * 1024  # SageMaker's cap on MaxPayloadInMB x MaxConcurrentTransforms


class SageMakerBatchBackendConfig(_BackendBase):
    """SageMaker Batch Transform (CreateTransformJob): runs a flushed batch as one S3 input object. Batch lane only.

    ``max_concurrency`` counts batches (transform jobs) in flight; ``timeout`` is one job's, from its creation.
    """

    kind: Literal["sagemaker-batch"]
    model_name: str = Field(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$", max_length=63)  # an existing SageMaker model
    instance_type: str = Field("ml.m5.large", pattern=r"^ml\.[a-z0-9]+\.[a-z0-9]+$")
    instance_count: int = Field(1, ge=1, le=100)
    max_payload: Size = 6_000_000  # per mini-batch sent to the model: MaxPayloadInMB, rounded up to whole MiB
    max_concurrent_transforms: int = Field(1, ge=1, le=100)
    input_location: str = Field(pattern=S3_URI)  # s3://bucket/prefix: each batch's records go here
    output_location: str = Field(pattern=S3_URI)  # S3OutputPath: SageMaker writes <input object>.out here
    region: str | None = None
    endpoint_url: str | None = None  # the SageMaker control plane: a VPC endpoint or an emulator
    s3_endpoint_url: str | None = None  # S3, likewise
    poll: Duration = Field(5.0, gt=0.0)  # first DescribeTransformJob delay; doubles up to max_poll
    max_poll: Duration = Field(60.0, gt=0.0)
    timeout: Duration = Field(24 * 3600.0, gt=0.0)  # a job still running then fails its records (and is stopped)
    tags: dict[str, str] = Field(default_factory=dict)

    @property
    def max_payload_mb(self) -> int:
        """MaxPayloadInMB: SageMaker counts MiB; rounded up so a record of max_payload bytes still fits."""
        return max(1, -(-self.max_payload // (1024 * 1024)))

    @model_validator(mode="after")
    def _within_sagemaker_limits(self) -> SageMakerBatchBackendConfig:
        if self.max_payload_mb * 1024 * 1024 > MAX_TRANSFORM_PAYLOAD:
            raise ValueError("max_payload cannot exceed 100MiB (SageMaker's MaxPayloadInMB limit)")
        if self.max_payload_mb * self.max_concurrent_transforms * 1024 * 1024 > MAX_TRANSFORM_PAYLOAD:
            raise ValueError("max_payload x max_concurrent_transforms cannot exceed 100MiB (a SageMaker limit)")
        if self.max_poll < self.poll:
            raise ValueError("max_poll must be at least poll")
        if self.serverless is not None:
            raise ValueError("serverless does not apply to a sagemaker-batch backend")
        return self


class AsyncNotificationsConfig(Strict):
    """An SQS queue subscribed to the endpoint's SNS success and error topics (one queue per replica)."""

    queue_url: str = Field(pattern=r"^https?://")
    region: str | None = None  # default: the backend's region
    endpoint_url: str | None = None  # SQS's URL: a VPC endpoint or an emulator
    wait: Duration = Field(20.0, ge=0.0, le=20.0)  # ReceiveMessage long-poll time (SQS allows up to 20 s)


class SageMakerAsyncBackendConfig(_BackendBase):
    """A SageMaker Async Inference endpoint (InvokeEndpointAsync); for a model's ``async`` lane only.

    ``max_concurrency`` bounds the invocations this process follows at once; ``timeout`` is how long one
    may take from submission to its output (also sent as RequestTTLSeconds, so SageMaker drops what the
    router stopped waiting for).
    """

    kind: Literal["sagemaker-async"]
    endpoint: str = Field(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$", max_length=63)
    region: str | None = None
    endpoint_url: str | None = None  # SageMaker Runtime's URL: a VPC endpoint or an emulator
    s3_endpoint_url: str | None = None  # S3's, likewise
    input_location: str = Field(pattern=S3_URI)  # s3://bucket/prefix: each payload is uploaded under it
    poll: Duration = Field(1.0, gt=0.0)  # first S3 check interval for the output; doubles up to max_poll
    max_poll: Duration = Field(30.0, gt=0.0)
    timeout: Duration = Field(3600.0, ge=60.0, le=6 * 3600.0)
    notifications: AsyncNotificationsConfig | None = None

    @model_validator(mode="after")
    def _async_fields(self) -> SageMakerAsyncBackendConfig:
        if self.serverless is not None:
            raise ValueError("serverless does not apply to a sagemaker-async backend")
        if self.max_poll < self.poll:
            raise ValueError("max_poll must be at least poll")
        return self


BackendConfig = Annotated[
    HttpBackendConfig | SageMakerBackendConfig | SageMakerBatchBackendConfig | SageMakerAsyncBackendConfig,
    Field(discriminator="kind"),
]
# Backend kinds that serve only some lanes (a batch job API cannot answer a request in its own exchange).
KIND_LANES: dict[str, frozenset[str]] = {"sagemaker-batch": frozenset({"batch"}),
                                         "sagemaker-async": frozenset({"async"})}


class RouteConfig(Strict):
    lane: ModelLane
    fallback: list[ModelLane] = Field(default_factory=list)


class BatchConfig(Strict):
    """The batch lane's buffer (flush triggers) and runs, per model."""

    max_records: int = Field(1000, ge=1, le=1_000_000)  # flush when this many records are buffered
    max_bytes: Size = Field(6_000_000, ge=1)  # ... or this many bytes (SageMaker's MaxPayloadInMB)
    max_wait: Duration = Field(30.0, gt=0)  # ... or when the oldest buffered record is this old
    max_payload: Size = Field(6_000_000, ge=1)  # the largest mini-batch sent to the model in one call
    max_concurrent: int = Field(4, ge=1, le=1000)  # mini-batches in flight at once, per run
    # A request larger than max_bytes on its own: 413, or "split" to run it alone, in mini-batches.
    oversized: Literal["reject", "split"] = "reject"


class PathConfig(Strict):
    """An extra URL of a model, forwarded as it came: a path (``{name}`` matches one segment, a final ``*`` any
    rest), its methods, and whether it is a control endpoint (health, readiness, metadata)."""

    path: str
    methods: list[HttpMethod] | None = Field(None, min_length=1)  # default: POST; GET and HEAD for control
    control: bool = False  # forwarded to the real-time backend without routing, counting or taking a slot


# A bare string is an inference path taking POST
PathEntry = Annotated[PathConfig, BeforeValidator(lambda v: {"path": v} if isinstance(v, str) else v)]


class ModelConfig(Strict):
    lanes: dict[ModelLane, str]
    limits: dict[ModelLane, Size] = Field(default_factory=dict)
    default: RouteConfig | None = None  # when every policy abstains; default: first sync lane
    policy: list[str] = Field(default_factory=list)
    # The paths (and methods) clients of this model server protocol call, e.g. KServe V2's health, metadata, infer
    protocol: ProtocolName | None = None
    # extra URLs, e.g. /v2/models/fraud/infer, /v1/fraud/* or {path: /v2/models/fraud/ready, control: true}
    paths: list[PathEntry] = Field(default_factory=list)
    # Answer 202 + a job even without Prefer: respond-async (for clients built for an async API).
    async_without_prefer: bool = False
    batch: BatchConfig = Field(default_factory=BatchConfig)
    # A candidate chain that decides on live traffic without dispatching (router_shadow_decisions_total).
    shadow: list[str] = Field(default_factory=list)

    def limit(self, lane: Lane) -> int:
        limit: int = self.limits.get(lane.value, DEFAULT_LIMITS[lane])  # type: ignore[call-overload]
        if lane is Lane.BATCH and self.batch.oversized == "reject":
            return min(limit, self.batch.max_bytes)
        return limit

    def path_rules(self, name: str) -> list[PathRule]:
        """The protocol's paths, then the declared ones; a declared path replaces the protocol's same path."""
        declared = [_declared_rule(name, p, self.protocol) for p in self.paths]
        mine = {r.pattern for r in declared}
        preset = preset_rules(self.protocol, name) if self.protocol else []
        return [r for r in preset if r.pattern not in mine] + declared

    def default_route(self) -> RouteConfig:
        if self.default is not None:
            return self.default
        present = [lane.value for lane in SYNC_LANES if lane.value in self.lanes]
        if not present:
            present = [lane.value for lane in MODEL_LANES if lane.value in self.lanes]
        return RouteConfig.model_validate({"lane": present[0], "fallback": present[1:]})


def _declared_rule(model: str, entry: PathConfig, protocol: str | None) -> PathRule:
    methods = frozenset(entry.methods) if entry.methods else (CONTROL_METHODS if entry.control else INFERENCE_METHODS)
    return PathRule(model, entry.path, methods, control=entry.control, protocol=protocol)


class PolicyConfig(Strict):
    type: str
    params: Any = None


class FallbackConfig(Strict):
    """Retry budget: fallbacks after a failed call may add at most this share of the requests, plus a burst."""

    retry_budget: float = Field(0.15, ge=0.0, le=10.0)  # tokens each request deposits; a retry costs one
    retry_burst: float = Field(10.0, ge=1.0, le=10_000.0)  # the most tokens kept (full at start)
    # Deprecated: a rate floor on top (Finagle's minRetriesPerSec). It breaks the bound on quiet models.
    min_retries_per_second: float = Field(0.0, ge=0.0)
    # Requests at or above this urgency are never refused for capacity alone: when they cannot queue (the
    # queue is full of equally urgent ones, or their predicted wait exceeds their budget) or their wait runs
    # out, they are sent to the route's first full backend over its limit.
    overflow_min_urgency: str = "critical"


class WebhookConfig(Strict):
    """Completion callbacks for jobs: a client names a URL in ``header``; it must match ``allow``."""

    allow: list[str] = Field(min_length=1)  # exact URLs, or prefixes ending in '*'; nothing else is called
    secret: SecretStr = Field(min_length=16)  # HMAC-SHA256 key of the X-Router-Signature header
    header: str = "X-Callback-Url"
    attempts: int = Field(3, ge=1, le=10)


class JobNotificationsConfig(Strict):
    """AWS state mode: every finished job's status JSON (as GET /jobs/{id}) is published to an SNS topic."""

    sns_topic_arn: str = Field(pattern=r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_.-]{1,256}$")
    region: str | None = None  # default: the state's region
    endpoint_url: str | None = None  # default: the state's endpoint_url
    attempts: int = Field(3, ge=1, le=10)


class PricesConfig(Strict):
    """Overrides of the shipped price table (router/prices.json, us-east-1)."""

    instance_hourly: dict[str, float] = Field(default_factory=dict)  # instance type -> $ per hour
    serverless_gb_second: float | None = Field(None, ge=0.0)


class ProxyConfig(Strict):
    """Requests forwarded as they came (extra paths): which request headers the router keeps to itself. The
    urgency header, the API key header and the webhooks' callback header are always kept back too."""

    strip_headers: list[str] = Field(default_factory=lambda: ["Prefer", "X-Deadline-Ms"])


class RouterConfig(Strict):
    server: ServerConfig = ServerConfig()
    state: StateConfig = Field(default_factory=LocalStateConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    urgency: UrgencyConfig = UrgencyConfig()
    callers: list[CallerConfig] = Field(default_factory=list)
    backends: dict[str, BackendConfig]
    models: dict[str, ModelConfig]
    policies: dict[str, PolicyConfig] = Field(default_factory=dict)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    webhooks: WebhookConfig | None = None
    notifications: JobNotificationsConfig | None = None
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    prices: PricesConfig = Field(default_factory=PricesConfig)

    def backend_names(self) -> set[str]:
        return set(self.backends)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DEFAULT_LEVELS = UrgencyConfig().levels


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _backend_kind(backend: Any) -> str:
    kind = _mapping(backend).get("kind")
    return kind if isinstance(kind, str) else ""


def _semantic_issues(data: dict[str, Any]) -> list[tuple[Path, str, bool]]:
    """Cross-references pydantic cannot see, checked on the raw YAML so they are reported even when other
    fields are invalid. Each issue: (path, message, whether it points at the key rather than the value)."""
    issues: list[tuple[Path, str, bool]] = []
    backends, models, policies = (_mapping(data.get(k)) for k in ("backends", "models", "policies"))
    for section, names in (("backends", backends), ("models", models), ("policies", policies)):
        for name in names:
            if not _NAME.match(name):
                issues.append(((section, name), f"name must match {_NAME.pattern}", True))
    raw_levels = _mapping(data.get("urgency")).get("levels")
    levels = raw_levels if isinstance(raw_levels, dict) and raw_levels else _DEFAULT_LEVELS
    callers = _list(data.get("callers"))
    keys: set[tuple[str, str]] = set()
    for i, caller in enumerate(callers):
        caller = _mapping(caller)
        level = caller.get("max_urgency")
        if isinstance(level, str) and level not in levels:
            issues.append((("callers", i, "max_urgency"), f"unknown urgency level {level!r}", False))
        for field_name in ("api_key", "aws_access_key_id"):
            key = caller.get(field_name)
            if isinstance(key, str) and (field_name, key) in keys:
                issues.append((("callers", i, field_name), f"{field_name} is used by another caller", False))
            keys.add((field_name, str(key)))
    overflow = _mapping(data.get("fallback")).get("overflow_min_urgency")
    if isinstance(overflow, str) and overflow not in levels:
        issues.append((("fallback", "overflow_min_urgency"), f"unknown urgency level {overflow!r}", False))
    if "notifications" in data and _mapping(data.get("state")).get("kind") != "aws":
        issues.append((("notifications",), "SNS job notifications need state kind 'aws'", True))
    paths: dict[str, str] = {}
    for model_name, model in models.items():
        model = _mapping(model)
        base: Path = ("models", model_name)
        lanes = _mapping(model.get("lanes"))
        for lane, backend in lanes.items():
            if isinstance(backend, str) and backend not in backends:
                issues.append(((*base, "lanes", lane), f"unknown backend {backend!r}", False))
            elif isinstance(backend, str) and lane not in KIND_LANES.get(_backend_kind(backends[backend]), (lane,)):
                kind = _backend_kind(backends[backend])
                allowed = ", ".join(sorted(KIND_LANES[kind]))
                issues.append(((*base, "lanes", lane), f"backend {backend!r} is of kind {kind!r}, which serves only "
                               f"the {allowed} lane, not {lane}", False))
            elif lane == "batch" and _mapping(data.get("state")).get("kind") == "aws" \
                    and not _mapping(data.get("state")).get("batch_queue_url"):
                issues.append(((*base, "lanes", lane), "with state kind 'aws' the batch lane needs "
                               "state.batch_queue_url, the SQS queue its buffer lives in", False))
        default = model.get("default")
        if isinstance(default, dict) and lanes:
            named: list[tuple[Path, Any]] = [(("lane",), default.get("lane"))]
            named += [(("fallback", j), lane) for j, lane in enumerate(_list(default.get("fallback")))]
            for where, lane in named:
                if isinstance(lane, str) and lane not in lanes:
                    issues.append(((*base, "default", *where), f"lane {lane!r} has no backend in this model's lanes",
                                   False))
        for key in ("policy", "shadow"):
            for j, policy in enumerate(_list(model.get(key))):
                if isinstance(policy, str) and policy not in policies:
                    issues.append(((*base, key, j), f"unknown policy {policy!r}", False))
        issues += _path_issues(model_name, model, backends, paths)
    return issues


def _path_issues(model_name: str, model: dict[str, Any], backends: dict[str, Any],
                 owners: dict[str, str]) -> list[tuple[Path, str, bool]]:
    """A model's extra paths: valid patterns, each owned by one model, control paths on an http backend.
    ``owners`` (pattern -> model) carries over from the models before, in config order."""
    issues: list[tuple[Path, str, bool]] = []
    base: Path = ("models", model_name)
    lanes = _mapping(model.get("lanes"))
    control_backend = lanes.get("realtime", lanes.get("serverless"))
    control_ok = isinstance(control_backend, str) and _backend_kind(backends.get(control_backend)) == "http"
    control_problem = ("control paths are forwarded to the model's realtime (else serverless) backend, "
                       "which must be of kind 'http'")
    declared: set[str] = set()
    for j, entry in enumerate(_list(model.get("paths"))):
        raw = entry.get("path") if isinstance(entry, dict) else entry
        if not isinstance(raw, str):
            continue
        where: Path = (*base, "paths", j, "path") if isinstance(entry, dict) else (*base, "paths", j)
        problem = pattern_problem(raw)
        if problem is None and raw in declared:
            problem = "path declared twice for this model"
        elif problem is None and owners.get(raw, model_name) != model_name:
            problem = f"path already belongs to model {owners[raw]!r}"
        elif problem is None and isinstance(entry, dict) and entry.get("control") is True and not control_ok:
            problem = control_problem
        if problem is not None:
            issues.append((where, problem, False))
        declared.add(raw)
        owners.setdefault(raw, model_name)
    protocol = model.get("protocol")
    if isinstance(protocol, str) and protocol in PROTOCOLS:
        for rule in preset_rules(protocol, model_name):
            owner = owners.get(rule.pattern, model_name)
            if rule.pattern in declared or (owner != model_name and rule.shared):
                continue  # declared paths replace the preset's; a shared one stays with the first model
            if owner != model_name:
                issues.append(((*base, "protocol"), f"{protocol}'s path {rule.pattern} already belongs to "
                               f"model {owner!r}", False))
            elif rule.control and not control_ok:
                issues.append(((*base, "protocol"), f"{protocol}: {control_problem}", False))
                break
            owners.setdefault(rule.pattern, model_name)
    return issues


def _policy_issues(data: dict[str, Any], located: Located, file: str) -> list[ConfigIssue]:
    """Build every policy from the raw YAML, so each policy's own params errors are reported too."""
    from router.policy.registry import PolicyBuildError, build_policy, policy_types

    raw_levels = _mapping(data.get("urgency")).get("levels")
    levels = raw_levels if isinstance(raw_levels, dict) and raw_levels else _DEFAULT_LEVELS
    issues: list[ConfigIssue] = []
    for name, raw in _mapping(data.get("policies")).items():
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
            continue  # pydantic reports the shape
        base: Path = ("policies", name)
        try:
            build_policy(name, raw["type"], raw.get("params"), levels)
        except PolicyBuildError as exc:
            for path, message in exc.issues:
                where = (*base, "type") if exc.unknown_type else (*base, "params", *path)
                line, col = located.position(where)
                issues.append(ConfigIssue(file, line, col, format_path(where), message))
        except ValidationError as exc:
            params_model = policy_types().get(raw["type"])
            issues += _issues_from_validation(exc, located, file, (*base, "params"), raw.get("params"),
                                              params_model.Params if params_model is not None else None)
    return issues


def _pydantic_path(loc: tuple[str | int, ...], data: Any) -> Path:
    """Drop the parts of a pydantic error location that are not in the YAML (union tags, validators)."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and str(part) in node:
            path.append(str(part))
            node = node[str(part)]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and "[" not in part and part not in _TAGS:
            path.append(part)  # a missing field: report it under its parent's position
            node = None
    return tuple(path)


_TAGS = {"http", "sagemaker", "sagemaker-batch", "sagemaker-async", "local", "aws", "fixed", "adaptive"}


def known_keys(model: Any, path: Path, data: Any) -> list[str]:
    """The keys the config model accepts at ``path`` of ``data`` (for "did you mean"); [] where unknown."""
    annotation: Any = model
    node = data
    for part in (*path, None):
        while True:  # unwrap Annotated, Optional and unions (by the "kind" the data names, else the first model)
            origin, args = get_origin(annotation), get_args(annotation)
            if origin is Annotated:
                annotation = args[0]
            elif origin in (UnionType, Union):
                models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
                kind = node.get("kind") if isinstance(node, dict) else None
                chosen = [m for m in models if m.model_fields.get("kind") is not None
                          and kind in get_args(m.model_fields["kind"].annotation)]
                annotation = (chosen or models or [args[0]])[0]
            elif isinstance(annotation, type) and issubclass(annotation, RootModel):
                annotation = annotation.model_fields["root"].annotation
            else:
                break
        if part is None:
            break
        origin, args = get_origin(annotation), get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and isinstance(part, str):
            field = annotation.model_fields.get(part)
            if field is None:
                return []
            annotation = field.annotation
        elif origin is dict and args:
            annotation = args[1]
        elif origin is list and args:
            annotation = args[0]
        else:
            return []
        node = node.get(part) if isinstance(node, dict) else node[part] if isinstance(node, list) \
            and isinstance(part, int) and part < len(node) else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _issues_from_validation(
    exc: ValidationError, located: Located, file: str, prefix: Path = (), data: Any = None, model: Any = None
) -> list[ConfigIssue]:
    out = []
    root = located.data if data is None else data
    model = RouterConfig if model is None else model
    for err in exc.errors(include_url=False):
        rel = _pydantic_path(tuple(err["loc"]), root)
        path = (*prefix, *rel)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            guess = difflib.get_close_matches(str(path[-1]), known_keys(model, rel[:-1], root), n=1) if rel else []
            if guess:
                msg = f"unknown key {path[-1]!r}: did you mean {guess[0]!r}?"
            line, col = located.key_position(path)
        elif err["type"] == "missing":
            msg = "required field is missing"
            line, col = located.position(path[:-1])
        else:
            line, col = located.position(path)
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        out.append(ConfigIssue(file, line, col, format_path(path), msg))
    return out


def parse_config(text: str, file: str = "<config>", env: Mapping[str, str] | None = None, *,
                 warnings: list[ConfigIssue] | None = None) -> RouterConfig:
    """Validate a config. Raises ConfigError with every issue found, sorted by position. ``warnings``, if given,
    receives what works but not as written (router.config_checks): dead rules, unreachable lanes."""
    from router.config_checks import config_warnings, semantic_errors

    located = load_located(text, file, env, keep_going=True)
    data = located.data
    if not isinstance(data, dict):
        raise ConfigError([*located.issues, ConfigIssue(file, 1, 1, "", "the config must be a YAML mapping")])
    issues: list[ConfigIssue] = []
    cfg: RouterConfig | None = None
    try:
        cfg = RouterConfig.model_validate(data)
    except ValidationError as exc:
        issues += _issues_from_validation(exc, located, file)
    for path, message, at_key in _semantic_issues(data):
        line, col = located.key_position(path) if at_key else located.position(path)
        issues.append(ConfigIssue(file, line, col, format_path(path), message))
    issues += _policy_issues(data, located, file)
    issues += semantic_errors(data, located, file)
    if located.issues:  # a missing ${VAR} became "": what that empty value breaks is the same mistake
        unset = [i.path for i in located.issues if i.message.startswith("environment variable")]
        issues = [i for i in issues if not any(i.path == p or i.path.startswith(p + ".") for p in unset)]
        issues += located.issues
    if cfg is not None:
        from router.cost import cost_issues

        for path, message in cost_issues(cfg):
            line, col = located.position(path)
            issues.append(ConfigIssue(file, line, col, format_path(path), message))
    if issues or cfg is None:
        raise ConfigError(_sorted(issues))
    if warnings is not None:
        try:
            warnings += config_warnings(cfg, located, file)
        except Exception as exc:  # the analysis must never stand between a valid config and the router
            warnings.append(ConfigIssue(file, 1, 1, "", f"the rules could not be analysed ({type(exc).__name__}: "
                                        f"{exc}); please report it", "warning"))
    return cfg


def _sorted(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    return sorted(set(issues), key=lambda i: (i.line, i.col, i.path, i.message))


def load_config(path: str | FsPath, env: Mapping[str, str] | None = None, *,
                warnings: list[ConfigIssue] | None = None) -> RouterConfig:
    """Read and validate a config file; ConfigError lists every problem as FILE:LINE:COL."""
    p = FsPath(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), 1, 1, "", f"cannot read config: {exc.strerror}")]) from None
    return parse_config(decode_text(data, str(path)), str(path), env, warnings=warnings)
