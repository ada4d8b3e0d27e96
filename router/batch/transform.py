"""``sagemaker-batch``: a flushed batch run as one SageMaker Batch Transform job.

The records go up as one S3 object (one record per line), CreateTransformJob runs the model over it
(SplitType Line, AssembleWith Line), DescribeTransformJob is followed with backoff, and the ``.out``
object's lines are mapped back to the records in order.

The job name is derived from the batch id and the batch's content, so a router that restarts mid-run
and runs the same batch again follows the job it already created (job names are unique per account and
region, forever) instead of paying for a second one; a different batch that reuses an id (a fresh state
folder, another deployment in the same account) gets a job of its own instead of an old job's outputs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import structlog
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    HTTPClientError,
    ReadTimeoutError,
)

from router.backends.sagemaker import SageMakerClients, client_error_kind
from router.batch.base import BatchRunner, RecordOutcome
from router.batch.records import OutputCountMismatch, RecordFormat
from router.config import SageMakerBatchBackendConfig
from router.types import RETRYABLE

if TYPE_CHECKING:
    from router.backends import Connections

log = structlog.get_logger("router.batch")

T = TypeVar("T")

TERMINAL = frozenset({"Completed", "Failed", "Stopped"})
MAX_REASON = 1024  # FailureReason's own limit
_EXTENSIONS = {RecordFormat.CSV: ".csv", RecordFormat.JSONL: ".jsonl", RecordFormat.JSON: ".jsonl"}
# Failures of the transport, worth another try; anything else botocore raises will not get better.
_TRANSIENT = (EndpointConnectionError, ConnectionClosedError, HTTPClientError, ReadTimeoutError,
              aiohttp.ClientError, TimeoutError)


class TransformFailed(Exception):
    """The batch cannot be run or its outputs cannot be read: every record fails with this message."""


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")`` (a non-empty prefix ends with '/')."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def transform_job_name(batch_id: str, digest: str) -> str:
    """A valid TransformJobName (``[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}``): readable batch id, then the digest."""
    stem = re.sub(r"[^a-zA-Z0-9]+", "-", batch_id).strip("-")[: 62 - len(digest)].rstrip("-")
    return f"{stem}-{digest}" if stem else digest


def input_object(records: Sequence[bytes], fmt: RecordFormat) -> bytes:
    """The transform's input: one record per line. A JSON instance becomes a one-instance request
    (``{"instances":[...]}``), the shape the model's container takes on the other lanes; such lines are
    sent one per call (SingleRecord), as lines of JSON requests are not one JSON document."""
    if fmt is RecordFormat.JSON:
        return b"".join(b'{"instances":[' + record + b"]}\n" for record in records)
    return b"".join(record + b"\n" for record in records)


def map_outputs(body: bytes, media: str, expected: int) -> list[bytes]:
    """The ``.out`` object's outputs, one per record; OutputCountMismatch when they do not line up.

    AssembleWith Line puts each model answer on its own line: for JSON, each line is an answer
    ``{"predictions": [...]}`` (or a list) covering one or more records; otherwise one line per record.
    Blank lines are skipped: a newline added after an answer that already ended with one is no output.
    """
    lines = [(n, line) for n, line in enumerate(body.splitlines(), 1) if line.strip()]
    if media != "application/json":
        if len(lines) != expected:
            raise OutputCountMismatch(f"the transform answered {len(lines)} output lines for {expected} records")
        return [line for _, line in lines]
    outputs: list[bytes] = []
    for number, line in lines:
        try:
            doc = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise OutputCountMismatch(f"output line {number} is not JSON") from None
        items = doc.get("predictions") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise OutputCountMismatch(f'output line {number} has no "predictions" list')
        outputs += [json.dumps(item, separators=(",", ":")).encode() for item in items]
    if len(outputs) != expected:
        raise OutputCountMismatch(f"the transform answered {len(outputs)} outputs for {expected} records")
    return outputs


def _error(exc: ClientError) -> tuple[str, int | None, str]:
    response: dict[str, Any] = exc.response or {}
    error = response.get("Error") or {}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return str(error.get("Code") or "Unknown"), status if isinstance(status, int) else None, str(
        error.get("Message") or "")


def _already_exists(exc: ClientError) -> bool:
    code, _, message = _error(exc)
    text = message.lower()
    return code == "ResourceInUse" or (code == "ValidationException" and (
        "already exists" in text or "must be unique" in text))


def _short(text: str) -> str:
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


class TransformRunner(BatchRunner):
    """Runs each batch as one Batch Transform job of ``cfg.model_name``; see the module's docstring."""

    def __init__(self, name: str, cfg: SageMakerBatchBackendConfig, clients: SageMakerClients) -> None:
        self.name = name
        self.cfg = cfg
        self._clients = clients
        self._input_bucket, self._input_prefix = split_s3_uri(cfg.input_location)
        self._output_bucket, self._output_prefix = split_s3_uri(cfg.output_location)

    async def close(self) -> None:
        return None  # the clients belong to SageMakerClients

    async def _sagemaker(self) -> Any:
        return await self._clients.get(self.cfg.region, self.cfg.endpoint_url, "sagemaker")

    async def _s3(self) -> Any:
        return await self._clients.get(self.cfg.region, self.cfg.s3_endpoint_url, "s3")

    # -- the run ------------------------------------------------------------------------------------------

    async def run(self, batch_id: str, records: Sequence[bytes], fmt: RecordFormat, *,
                  content_type: str, accept: str | None) -> list[RecordOutcome]:
        if not records:
            return []
        media_in = "application/json" if fmt is RecordFormat.JSON else content_type
        media_out = (accept or media_in).split(";", 1)[0].strip().lower()
        body = input_object(records, fmt)
        digest = await asyncio.to_thread(self._digest, body, fmt, media_in, accept)
        job = transform_job_name(batch_id, digest)
        key = f"{self._input_prefix}{job}{_EXTENSIONS[fmt]}"
        started = time.monotonic()
        try:
            outputs = await self._transform(job, key, body, fmt, media_in, accept, media_out, len(records))
        except TransformFailed as exc:
            reason = _short(str(exc))
            log.warning("batch_transform_failed", backend=self.name, batch_id=batch_id, job=job, reason=reason)
            return [RecordOutcome(None, reason)] * len(records)
        log.info("batch_transform_done", backend=self.name, batch_id=batch_id, job=job, records=len(records),
                 seconds=round(time.monotonic() - started, 3))
        return [RecordOutcome(output) for output in outputs]

    def _digest(self, body: bytes, fmt: RecordFormat, media_in: str, accept: str | None) -> str:
        # everything that shapes the outputs: a batch that differs in any of it must not follow another's job
        h = hashlib.sha256()
        for part in (self.cfg.model_name, fmt.value, media_in, accept or ""):
            h.update(part.encode() + b"\0")
        h.update(body)
        return h.hexdigest()[:16]

    async def _transform(self, job: str, key: str, body: bytes, fmt: RecordFormat, media_in: str,
                         accept: str | None, media_out: str, expected: int) -> list[bytes]:
        deadline = time.time() + self.cfg.timeout
        if await self._exists(job, deadline):  # the router restarted while this batch ran: follow that job
            log.info("batch_transform_follow", backend=self.name, job=job)
        else:
            await self._start(job, key, body, fmt, media_in, accept, deadline)
        try:
            status = await self._follow(job, deadline)
        except TransformFailed:
            await self._delete_input(key)
            raise
        # (cancelled, the router stopping: the job runs on and a restart follows it, so its input stays)
        await self._delete_input(key)
        if status["TransformJobStatus"] == "Failed":
            raise TransformFailed(f"transform job {job} failed: {status.get('FailureReason') or 'no reason given'}")
        if status["TransformJobStatus"] == "Stopped":
            raise TransformFailed(f"transform job {job} was stopped")
        out_key = f"{self._output_prefix}{key.rpartition('/')[2]}.out"
        output = await self._read_output(job, out_key, deadline)
        try:
            return map_outputs(output, media_out, expected)
        except OutputCountMismatch as exc:
            raise TransformFailed(f"transform job {job}: {exc}") from None

    async def _exists(self, job: str, deadline: float) -> bool:
        """Whether a job of this name exists (DescribeTransformJob answers; a ValidationException says no)."""
        sm = await self._sagemaker()
        try:
            await self._retrying("DescribeTransformJob", deadline, lambda: sm.describe_transform_job(
                TransformJobName=job))
        except ClientError as exc:
            code, status, message = _error(exc)
            if code == "ValidationException":  # "Could not find requested job": CreateTransformJob says for sure
                return False
            raise TransformFailed(f"DescribeTransformJob {job}: {code} ({status}): {message}") from None
        return True

    async def _start(self, job: str, key: str, body: bytes, fmt: RecordFormat, media_in: str,
                     accept: str | None, deadline: float) -> None:
        """Write the input object and create the job; a job of this name created meanwhile is followed."""
        s3 = await self._s3()
        where = f"s3://{self._input_bucket}/{key}"
        try:
            await self._retrying(f"cannot write the input {where}", deadline,
                                 lambda: s3.put_object(Bucket=self._input_bucket, Key=key, Body=body))
        except ClientError as exc:
            code, http_status, _ = _error(exc)
            raise TransformFailed(f"cannot write the input {where}: {code} ({http_status})") from None
        try:
            created = await self._create(job, key, fmt, media_in, accept, deadline)
        except TransformFailed:
            await self._delete_input(key)
            raise
        if not created:
            log.info("batch_transform_follow", backend=self.name, job=job)

    async def _create(self, job: str, key: str, fmt: RecordFormat, media_in: str, accept: str | None,
                      deadline: float) -> bool:
        """CreateTransformJob; False when a job of this name exists already (it is then followed)."""
        output: dict[str, Any] = {
            "S3OutputPath": f"s3://{self._output_bucket}/{self._output_prefix}".rstrip("/"), "AssembleWith": "Line"}
        if accept:
            output["Accept"] = accept
        params: dict[str, Any] = {
            "TransformJobName": job,
            "ModelName": self.cfg.model_name,
            "MaxConcurrentTransforms": self.cfg.max_concurrent_transforms,
            "MaxPayloadInMB": self.cfg.max_payload_mb,
            "BatchStrategy": "SingleRecord" if fmt is RecordFormat.JSON else "MultiRecord",
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix",
                                                "S3Uri": f"s3://{self._input_bucket}/{key}"}},
                "ContentType": media_in,
                "SplitType": "Line",
            },
            "TransformOutput": output,
            "TransformResources": {"InstanceType": self.cfg.instance_type,
                                   "InstanceCount": self.cfg.instance_count},
        }
        if self.cfg.tags:
            params["Tags"] = [{"Key": k, "Value": v} for k, v in self.cfg.tags.items()]
        sm = await self._sagemaker()
        try:
            await self._retrying("CreateTransformJob", deadline, lambda: sm.create_transform_job(**params))
        except ClientError as exc:
            if _already_exists(exc):
                return False  # the router restarted while this batch ran: follow that job
            code, status, message = _error(exc)
            raise TransformFailed(f"CreateTransformJob {job} refused: {code} ({status}): {message}") from None
        return True

    async def _follow(self, job: str, deadline: float) -> dict[str, Any]:
        """DescribeTransformJob until a terminal status, waiting poll, then twice as long, up to max_poll."""
        sm = await self._sagemaker()
        delay = self.cfg.poll
        while True:
            try:
                status: dict[str, Any] = await self._retrying(
                    "DescribeTransformJob", deadline, lambda: sm.describe_transform_job(TransformJobName=job))
            except ClientError as exc:
                code, http_status, message = _error(exc)
                raise TransformFailed(f"DescribeTransformJob {job}: {code} ({http_status}): {message}") from None
            if status.get("TransformJobStatus") in TERMINAL:
                return status
            created = status.get("CreationTime")
            if created is not None:  # a followed job's budget started when it was created, not now
                deadline = min(deadline, created.timestamp() + self.cfg.timeout)
            left = deadline - time.time()
            if left <= 0:
                await self._stop(job)
                raise TransformFailed(f"transform job {job} did not finish within {self.cfg.timeout:g}s; stopped")
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, self.cfg.max_poll)

    async def _stop(self, job: str) -> None:
        """Best effort: a job past its budget should not keep its instances billed."""
        sm = await self._sagemaker()
        try:
            await sm.stop_transform_job(TransformJobName=job)
        except (ClientError, BotoCoreError, *_TRANSIENT) as exc:
            log.warning("batch_transform_stop_failed", backend=self.name, job=job, error=type(exc).__name__)

    async def _read_output(self, job: str, key: str, deadline: float) -> bytes:
        s3 = await self._s3()

        async def get() -> bytes:
            resp = await s3.get_object(Bucket=self._output_bucket, Key=key)
            async with resp["Body"] as stream:
                data: bytes = await stream.read()
            return data

        try:
            return await self._retrying(f"cannot read s3://{self._output_bucket}/{key}", deadline, get)
        except ClientError as exc:
            code, status, _ = _error(exc)
            if code in ("NoSuchKey", "404"):
                raise TransformFailed(
                    f"transform job {job} completed without an output at s3://{self._output_bucket}/{key}") from None
            raise TransformFailed(f"cannot read s3://{self._output_bucket}/{key}: {code} ({status})") from None

    async def _delete_input(self, key: str) -> None:
        """Best effort: the records are in the router's buffer still; a leftover object costs only storage."""
        try:
            s3 = await self._s3()
            await s3.delete_object(Bucket=self._input_bucket, Key=key)
        except (ClientError, BotoCoreError, *_TRANSIENT) as exc:
            log.warning("batch_transform_cleanup_failed", backend=self.name, key=key, error=type(exc).__name__)

    async def _retrying(self, what: str, deadline: float, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, again after throttling, 5xx and dropped connections (backoff with jitter) until
        ``deadline``. Other ClientErrors are raised as they are; other botocore errors become TransformFailed."""
        delay = min(self.cfg.poll, 1.0)
        while True:
            try:
                return await call()
            except ClientError as exc:
                code, status, _ = _error(exc)
                if client_error_kind(code, status) not in RETRYABLE:
                    raise
                reason = f"{code} ({status})"
            except _TRANSIENT as exc:
                reason = type(exc).__name__  # only the type: the message carries the endpoint URL
            except BotoCoreError as exc:  # no credentials, invalid parameters: another try will not help
                raise TransformFailed(f"{what}: {type(exc).__name__}: {exc}") from None
            wait = delay * random.uniform(0.5, 1.0)
            if time.time() + wait > deadline:
                raise TransformFailed(f"{what}: {reason}, retried until the timeout")
            log.info("batch_transform_retry", backend=self.name, call=what, reason=reason, wait=round(wait, 3))
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.cfg.max_poll)


def build_batch_runner(name: str, cfg: SageMakerBatchBackendConfig, connections: Connections) -> TransformRunner:
    """The batch runner of a ``sagemaker-batch`` backend, on the process's shared AWS clients."""
    return TransformRunner(name, cfg, connections.sagemaker())
