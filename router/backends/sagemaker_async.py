"""``sagemaker-async`` backend: SageMaker Async Inference, for a model's ``async`` lane.

One call: upload the payload to ``input_location/<uuid>`` on S3, InvokeEndpointAsync with that
InputLocation, then follow the invocation until its output (or failure) object appears in S3. S3 is
the truth: it is checked with HeadObject at once and then with exponential backoff (``poll`` up to
``max_poll``). Where the endpoint's SNS success/error topics feed an SQS queue, a
:class:`CompletionListener` long-polls that queue and wakes the caller as soon as SageMaker reports
the invocation done, so completion is seen without waiting for the next S3 check. The uploaded input
is deleted when the call ends, whatever the outcome.

Clients (runtime, S3, SQS) come from the process's shared :class:`SageMakerClients`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from botocore.exceptions import BotoCoreError, ClientError

from router.backends.sagemaker import SageMakerClients, call_errors
from router.storage.base import StorageError
from router.storage.s3 import S3ObjectStore
from router.types import BackendError, FailureKind, Invocation, InvocationResult

log = structlog.get_logger("router.sagemaker_async")

MAX_FAILURE_TEXT = 4096  # bytes of a failure object kept as the job's error
MAX_INVOCATION_TIMEOUT_S = 3600  # InvokeEndpointAsync's InvocationTimeoutSeconds range is 1..3600
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
_MAX_INPUT = 1 << 30  # SageMaker Async Inference takes inputs up to 1 GB


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); ValueError for anything else."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


@dataclass(frozen=True, slots=True)
class AsyncNotice:
    """SageMaker's async inference notification (the JSON it publishes to the SNS topics)."""

    inference_id: str
    status: str  # "Completed" | "Failed"
    output_location: str | None = None
    failure_location: str | None = None
    failure_reason: str | None = None


def parse_notice(body: str) -> AsyncNotice | None:
    """The notification in an SQS message body: an SNS envelope or raw delivery; None if it is not one."""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
            data = json.loads(data["Message"])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    inference_id, status = data.get("inferenceId"), data.get("invocationStatus")
    if not isinstance(inference_id, str) or not isinstance(status, str):
        return None
    response = data.get("responseParameters")
    response = response if isinstance(response, dict) else {}

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) and value else None

    return AsyncNotice(
        inference_id=inference_id,
        status=status,
        output_location=text(response.get("outputLocation")),
        failure_location=text(response.get("failureLocation")) or text(data.get("failureLocation")),
        failure_reason=text(data.get("failureReason")),
    )


class _Waiter:
    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.notice: AsyncNotice | None = None


class CompletionListener:
    """Long-polls an SQS queue subscribed to an endpoint's SNS topics while someone waits on it.

    Every message received is deleted: a notification for an invocation no one here follows is stale or
    belongs to another replica, which then sees its output on its next S3 check. Give each replica its
    own queue (SNS fans out) to get every notification everywhere.
    """

    def __init__(self, name: str, clients: SageMakerClients, queue_url: str, *, region: str | None,
                 endpoint_url: str | None, wait_s: float = 20.0) -> None:
        self.name = name
        self._clients = clients
        self._queue_url = queue_url
        self._region = region
        self._endpoint_url = endpoint_url
        self._wait_s = int(wait_s)
        self._waiters: dict[str, set[_Waiter]] = {}
        self._wanted = asyncio.Event()  # set while at least one invocation is followed
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"sns-listener-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    @contextlib.contextmanager
    def watch(self, inference_id: str) -> Iterator[_Waiter]:
        """A waiter woken by the notifications for ``inference_id`` while the block runs."""
        waiter = _Waiter()
        self._waiters.setdefault(inference_id, set()).add(waiter)
        self._wanted.set()
        try:
            yield waiter
        finally:
            waiters = self._waiters.get(inference_id, set())
            waiters.discard(waiter)
            if not waiters:
                self._waiters.pop(inference_id, None)
            if not self._waiters:
                self._wanted.clear()

    def deliver(self, notice: AsyncNotice) -> None:
        for waiter in self._waiters.get(notice.inference_id, ()):
            waiter.notice = notice
            waiter.event.set()

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            await self._wanted.wait()
            try:
                sqs = await self._clients.get(self._region, self._endpoint_url, "sqs")
                resp = await sqs.receive_message(QueueUrl=self._queue_url, MaxNumberOfMessages=10,
                                                 WaitTimeSeconds=self._wait_s)
                messages = resp.get("Messages") or []
                for message in messages:
                    notice = parse_notice(str(message.get("Body", "")))
                    if notice is not None:
                        self.deliver(notice)
                if messages:
                    entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
                    await sqs.delete_message_batch(QueueUrl=self._queue_url, Entries=entries)
                backoff = 1.0
            except (ClientError, BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
                # the S3 checks go on meanwhile: a broken queue only slows completion down
                log.warning("sns_queue_receive_failed", backend=self.name, error=type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


class SageMakerAsyncBackend:
    """InvokeEndpointAsync on one endpoint, followed to its S3 output; failures become BackendError."""

    def __init__(
        self,
        name: str,
        endpoint: str,
        clients: SageMakerClients,
        *,
        input_location: str,
        region: str | None = None,
        endpoint_url: str | None = None,
        s3_endpoint_url: str | None = None,
        poll_s: float = 1.0,
        max_poll_s: float = 30.0,
        timeout_s: float = 3600.0,
        listener: CompletionListener | None = None,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self._clients = clients
        self._bucket, prefix = split_s3_uri(input_location)
        self._prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        self._region = region
        self._endpoint_url = endpoint_url
        self._s3_endpoint_url = s3_endpoint_url
        self._poll_s = poll_s
        self._max_poll_s = max(max_poll_s, poll_s)
        self._timeout_s = timeout_s
        self.listener = listener

    async def start(self) -> None:
        await self._clients.get(self._region, self._endpoint_url)
        await self._s3()
        if self.listener is not None:
            self.listener.start()

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()

    async def _upload(self, s3: Any, key: str, inv: Invocation) -> None:
        """The payload to the input location: one PutObject, or a multipart upload as a large job's
        payload is read from the router's storage (never held whole)."""
        if inv.stream is None:
            await s3.put_object(Bucket=self._bucket, Key=key, Body=inv.body)
            return
        try:
            await S3ObjectStore(self._bucket, client=s3).put_stream(key, inv.stream(), limit=_MAX_INPUT)
        except StorageError as exc:
            raise BackendError(FailureKind.UNAVAILABLE, f"{self.name}: cannot upload the input: {exc}") from None

    async def _s3(self) -> Any:
        return await self._clients.get(self._region, self._s3_endpoint_url, "s3")

    def _params(self, inv: Invocation, location: str) -> dict[str, Any]:
        budget = self._timeout_s if inv.job_timeout_s is None else inv.job_timeout_s
        params: dict[str, Any] = {
            "EndpointName": self.endpoint,
            "InputLocation": location,
            "InferenceId": inv.inference_id or uuid.uuid4().hex,
            # SageMaker drops a request still queued when the router stops waiting for it
            "RequestTTLSeconds": int(min(max(self._timeout_s, 60), 6 * 3600)),
            "InvocationTimeoutSeconds": int(min(max(budget, 1), MAX_INVOCATION_TIMEOUT_S)),
        }
        optional = {"ContentType": inv.content_type, "Accept": inv.accept, "CustomAttributes": inv.custom_attributes}
        params.update({k: v for k, v in optional.items() if v})
        return params

    async def invoke(self, inv: Invocation) -> InvocationResult:
        key = f"{self._prefix}{uuid.uuid4().hex}"
        location = f"s3://{self._bucket}/{key}"
        try:
            with call_errors(self.name, self._timeout_s, "InvokeEndpointAsync"):
                async with asyncio.timeout(self._timeout_s):
                    s3 = await self._s3()
                    await self._upload(s3, key, inv)
                    runtime = await self._clients.get(self._region, self._endpoint_url)
                    resp = await runtime.invoke_endpoint_async(**self._params(inv, location))
                    inference_id = str(resp.get("InferenceId") or "")
                    output, failure = resp.get("OutputLocation"), resp.get("FailureLocation")
                    if not output:
                        raise BackendError(FailureKind.UNAVAILABLE, f"{self.name}: no OutputLocation in the answer")
                    log.info("async_inference_submitted", backend=self.name, inference_id=inference_id)
                    return await self._follow(inference_id, str(output), str(failure) if failure else None)
        finally:
            await self._delete_input(key)

    async def _follow(self, inference_id: str, output: str, failure: str | None) -> InvocationResult:
        """Check S3 now, then after each backoff delay or notification, until an outcome object exists."""
        started = time.monotonic()
        delay = self._poll_s
        watch: contextlib.AbstractContextManager[_Waiter | None] = (
            self.listener.watch(inference_id) if self.listener else contextlib.nullcontext(None))
        with watch as waiter:
            while True:
                result = await self._outcome(output, failure, waiter.notice if waiter else None)
                if result is not None:
                    log.info("async_inference_completed", backend=self.name, inference_id=inference_id,
                             seconds=round(time.monotonic() - started, 3))
                    return result
                if waiter is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(waiter.event.wait(), delay)
                    waiter.event.clear()
                delay = min(delay * 2, self._max_poll_s)

    async def _outcome(self, output: str, failure: str | None, notice: AsyncNotice | None) -> InvocationResult | None:
        """The result once the output object exists; BackendError once the invocation failed; else None."""
        try:
            found = await self._read(output)
            if found is not None:
                body, content_type = found
                return InvocationResult(body=body, content_type=content_type)
            reason: str | None = None
            if failure is not None:
                found = await self._read(failure, limit=MAX_FAILURE_TEXT)
                if found is not None:
                    reason = found[0].decode("utf-8", "replace")
        except BackendError as exc:
            if not exc.retryable:
                raise
            log.warning("async_inference_check_failed", backend=self.name, error=exc.message)
            return None  # S3 hiccup: check again after the next delay
        if reason is None and notice is not None and notice.status == "Failed":
            reason = notice.failure_reason or "the invocation failed"
        if reason is None:
            return None
        raise BackendError(FailureKind.MODEL_ERROR, f"{self.name}: the model failed: {reason.strip()[:240]}",
                           original_message=reason)

    async def _read(self, uri: str, limit: int | None = None) -> tuple[bytes, str | None] | None:
        """The object at ``uri`` (at most ``limit`` bytes) and its content type, or None while it is absent."""
        bucket, key = split_s3_uri(uri)
        s3 = await self._s3()
        try:
            with call_errors(self.name, self._timeout_s, "HeadObject"):
                await s3.head_object(Bucket=bucket, Key=key)
        except BackendError as exc:
            if exc.status == 404:
                return None
            raise
        with call_errors(self.name, self._timeout_s, "GetObject"):
            extra = {"Range": f"bytes=0-{limit - 1}"} if limit else {}
            resp = await s3.get_object(Bucket=bucket, Key=key, **extra)
            async with resp["Body"] as stream:
                body: bytes = await stream.read()
        return body, resp.get("ContentType")

    async def _delete_input(self, key: str) -> None:
        """Best effort: a bucket lifecycle rule on the input prefix catches what this misses."""
        try:
            s3 = await self._s3()
            await asyncio.shield(asyncio.wait_for(s3.delete_object(Bucket=self._bucket, Key=key), 10.0))
        except (ClientError, BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("async_input_not_deleted", backend=self.name, key=key, error=type(exc).__name__)
