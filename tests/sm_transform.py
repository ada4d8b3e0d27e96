"""A SageMaker Batch Transform emulator for tests: the control plane's CreateTransformJob,
DescribeTransformJob and StopTransformJob in front of moto's S3 and a local model container.

moto completes a transform job at once and writes nothing, so this one does the work SageMaker does:
reads the input objects under ``S3Uri`` from S3, splits them into lines (SplitType Line), sends them to the
container's ``POST /invocations`` one line per call (SingleRecord) or in mini-batches of at most
MaxPayloadInMB (MultiRecord), up to MaxConcurrentTransforms at a time, and writes
``<S3OutputPath>/<input object name>.out`` (AssembleWith Line) only for an object whose every call
succeeded. The job moves InProgress -> Completed, or -> Failed with a FailureReason.

It speaks the awsJson1_1 protocol (``X-Amz-Target: SageMaker.<Operation>``; errors as
``{"__type": ..., "message": ...}``), so the real aiobotocore ``sagemaker`` client runs against it::

    async with TransformEmulator(moto_url) as emu:
        emu.add_model("fraud", container_url)
        emu.fail_next("ClientError: injected")      # the next job fails with this reason
        emu.delay_s = 0.5                           # jobs stay InProgress this long first
        emu.throttle(2, "CreateTransformJob")       # the next two such calls: ThrottlingException
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web

from tests.moto_server import boto3_client

ACCOUNT = "123456789012"
JSON_1_1 = "application/x-amz-json-1.1"
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
MIB = 1024 * 1024


class _ApiError(Exception):
    def __init__(self, error_type: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status


class _JobFailed(Exception):
    """The job ends Failed with this FailureReason."""


@dataclass
class TransformJob:
    name: str
    arn: str
    request: dict[str, Any]
    status: str = "InProgress"
    failure_reason: str | None = None
    created: float = field(default_factory=time.time)
    ended: float | None = None
    fail_with: str | None = None
    delay_s: float = 0.0
    task: asyncio.Task[None] | None = None
    payloads: list[bytes] = field(default_factory=list)  # the bodies sent to the container, in order


class TransformEmulator:
    """SageMaker's transform-job API on 127.0.0.1; ``s3_url`` is moto's server."""

    def __init__(self, s3_url: str, *, region: str = "us-east-1", account: str = ACCOUNT) -> None:
        self.s3_url = s3_url
        self.region = region
        self.account = account
        self.url = ""
        self.delay_s = 0.0
        self.calls: list[tuple[str, dict[str, Any]]] = []  # (operation, parameters), as received
        self.jobs: dict[str, TransformJob] = {}
        self._models: dict[str, str] = {}
        self._failures: deque[str] = deque()
        self._throttles: dict[str | None, int] = {}
        self._s3: Any = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- control ----------------------------------------------------------------------------------

    def add_model(self, name: str, container_url: str) -> None:
        """A SageMaker model ``name`` served by the container at ``container_url`` (its ``/invocations``)."""
        self._models[name] = container_url.rstrip("/")

    def fail_next(self, reason: str) -> None:
        """The next job created fails with ``reason`` (after its delay) without calling the container."""
        self._failures.append(reason)

    def throttle(self, times: int = 1, operation: str | None = None) -> None:
        """Answer the next ``times`` calls (of ``operation``, default any) with ThrottlingException, HTTP 400."""
        self._throttles[operation] = self._throttles.get(operation, 0) + times

    def operations(self, name: str) -> list[dict[str, Any]]:
        """The parameters of every call of operation ``name`` received (throttled ones included)."""
        return [params for op, params in self.calls if op == name]

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> str:
        self._s3 = boto3_client("s3", self.s3_url)
        app = web.Application()
        app.router.add_post("/", self._api)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        tasks = [job.task for job in self.jobs.values() if job.task is not None and not job.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> TransformEmulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- the API ----------------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        service, _, operation = target.partition(".")
        try:
            params = json.loads(await request.read() or b"{}")
        except ValueError:
            params = None
        self.calls.append((operation, params if isinstance(params, dict) else {}))
        handlers = {
            "CreateTransformJob": self._create,
            "DescribeTransformJob": self._describe,
            "StopTransformJob": self._stop_job,
        }
        try:
            if service != "SageMaker" or operation not in handlers:
                raise _ApiError("UnknownOperationException", f"Operation {target or '(none)'} is not supported")
            if not isinstance(params, dict):
                raise _ApiError("SerializationException", "the request body is not a JSON object")
            for key in (operation, None):
                if self._throttles.get(key, 0) > 0:
                    self._throttles[key] -= 1
                    raise _ApiError("ThrottlingException", "Rate exceeded")
            answer = handlers[operation](params)
        except _ApiError as exc:
            return web.Response(status=exc.status, body=json.dumps({"__type": exc.error_type,
                                                                    "message": exc.message}).encode(),
                                content_type=JSON_1_1, headers={"x-amzn-RequestId": str(uuid.uuid4())})
        return web.Response(body=json.dumps(answer).encode(), content_type=JSON_1_1,
                            headers={"x-amzn-RequestId": str(uuid.uuid4())})

    def _arn(self, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:transform-job/{name.lower()}"

    def _create(self, params: dict[str, Any]) -> dict[str, Any]:
        name = str(params.get("TransformJobName", ""))
        if not _NAME.match(name):
            raise _ApiError("ValidationException", f"1 validation error detected: Value '{name}' at "
                            "'transformJobName' failed to satisfy constraint: Member must satisfy regular "
                            "expression pattern: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
        if name in self.jobs:
            raise _ApiError("ValidationException", "Job name must be unique within an AWS account and region, "
                            f"and a job with this name already exists ({self._arn(name)})")
        model = params.get("ModelName")
        if model not in self._models:
            raise _ApiError("ValidationException", f"Could not find model \"{self._model_arn(str(model))}\".")
        payload_mb = int(params.get("MaxPayloadInMB", 6))
        concurrency = int(params.get("MaxConcurrentTransforms", 1))
        if not 0 <= payload_mb <= 100 or payload_mb * max(concurrency, 1) > 100:
            raise _ApiError("ValidationException", "MaxPayloadInMB must be at most 100, and "
                            "MaxConcurrentTransforms * MaxPayloadInMB cannot exceed 100 MB")
        if params.get("BatchStrategy", "MultiRecord") not in ("MultiRecord", "SingleRecord"):
            raise _ApiError("ValidationException", "BatchStrategy must be MultiRecord or SingleRecord")
        uri = str(params.get("TransformInput", {}).get("DataSource", {}).get("S3DataSource", {}).get("S3Uri", ""))
        if not uri.startswith("s3://"):
            raise _ApiError("ValidationException", f"invalid S3Uri {uri!r}")
        job = TransformJob(name, self._arn(name), params, delay_s=self.delay_s,
                           fail_with=self._failures.popleft() if self._failures else None)
        self.jobs[name] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        return {"TransformJobArn": job.arn}

    def _model_arn(self, name: str) -> str:
        return f"arn:aws:sagemaker:{self.region}:{self.account}:model/{name.lower()}"

    def _job(self, params: dict[str, Any]) -> TransformJob:
        name = str(params.get("TransformJobName", ""))
        job = self.jobs.get(name)
        if job is None:
            raise _ApiError("ValidationException", f"Could not find requested job with name {name}")
        return job

    def _describe(self, params: dict[str, Any]) -> dict[str, Any]:
        job = self._job(params)
        req = job.request
        answer: dict[str, Any] = {
            "TransformJobName": job.name,
            "TransformJobArn": job.arn,
            "TransformJobStatus": job.status,
            "ModelName": req["ModelName"],
            "MaxConcurrentTransforms": req.get("MaxConcurrentTransforms", 1),
            "MaxPayloadInMB": req.get("MaxPayloadInMB", 6),
            "BatchStrategy": req.get("BatchStrategy", "MultiRecord"),
            "TransformInput": req["TransformInput"],
            "TransformOutput": req["TransformOutput"],
            "TransformResources": req["TransformResources"],
            "CreationTime": job.created,
            "TransformStartTime": job.created,
        }
        if job.failure_reason is not None:
            answer["FailureReason"] = job.failure_reason
        if job.ended is not None:
            answer["TransformEndTime"] = job.ended
        return answer

    def _stop_job(self, params: dict[str, Any]) -> dict[str, Any]:
        job = self._job(params)
        if job.status == "InProgress":
            job.status = "Stopping"
            if job.task is not None:
                job.task.cancel()
        return {}

    # --- the work ---------------------------------------------------------------------------------

    async def _run(self, job: TransformJob) -> None:
        try:
            if job.delay_s > 0:
                await asyncio.sleep(job.delay_s)
            if job.fail_with is not None:
                raise _JobFailed(job.fail_with)
            await self._transform(job)
        except _JobFailed as exc:
            job.status, job.failure_reason = "Failed", str(exc)[:1024]
        except asyncio.CancelledError:
            job.status = "Stopped"
        else:
            job.status = "Completed"
        job.ended = time.time()

    async def _transform(self, job: TransformJob) -> None:
        req = job.request
        uri = req["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"]
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        listing = await asyncio.to_thread(self._s3.list_objects_v2, Bucket=bucket, Prefix=prefix)
        keys = [obj["Key"] for obj in listing.get("Contents", [])]
        if not keys:
            raise _JobFailed(f'ClientError: No S3 objects found under S3 URL "{uri}" given in input data source. '
                             f"Please ensure that the bucket exists in the selected region ({self.region}), "
                             "that objects exist under that S3 prefix.")
        out_bucket, _, out_prefix = req["TransformOutput"]["S3OutputPath"].removeprefix("s3://").partition("/")
        base = prefix[: prefix.rfind("/") + 1]  # outputs keep each object's path below the input's folder
        failures: list[str] = []
        for key in keys:
            try:
                output = await self._transform_object(job, bucket, key)
            except _JobFailed as exc:
                failures.append(str(exc))
                continue
            out_key = "/".join(part for part in (out_prefix.strip("/"), key[len(base):] + ".out") if part)
            await asyncio.to_thread(self._s3.put_object, Bucket=out_bucket, Key=out_key, Body=output)
        if failures:
            raise _JobFailed(failures[0])

    async def _transform_object(self, job: TransformJob, bucket: str, key: str) -> bytes:
        req = job.request
        got = await asyncio.to_thread(self._s3.get_object, Bucket=bucket, Key=key)
        data: bytes = got["Body"].read()
        lines = [line for line in data.split(b"\n") if line.strip()]
        limit = int(req.get("MaxPayloadInMB", 6)) * MIB
        batches: list[bytes] = []
        if req.get("BatchStrategy", "MultiRecord") == "SingleRecord":
            batches = lines
        else:
            current = b""
            for line in lines:
                if current and len(current) + len(line) + 1 > limit:
                    batches.append(current)
                    current = b""
                current += line + b"\n"
            if current:
                batches.append(current)
        if any(len(batch) > limit for batch in batches):
            raise _JobFailed(f"ClientError: a record of s3://{bucket}/{key} is larger than MaxPayloadInMB")
        gate = asyncio.Semaphore(max(int(req.get("MaxConcurrentTransforms", 1)), 1))

        async def invoke(payload: bytes) -> bytes:
            async with gate:
                return await self._invoke(job, payload)

        answers = await asyncio.gather(*(invoke(batch) for batch in batches))
        if req["TransformOutput"].get("AssembleWith") == "Line":
            return b"".join(answer.rstrip(b"\n") + b"\n" for answer in answers)
        return b"".join(answers)

    async def _invoke(self, job: TransformJob, payload: bytes) -> bytes:
        assert self._session is not None
        req = job.request
        headers = {"Content-Type": req["TransformInput"].get("ContentType", "application/octet-stream")}
        if req["TransformOutput"].get("Accept"):
            headers["Accept"] = req["TransformOutput"]["Accept"]
        job.payloads.append(payload)
        url = f"{self._models[req['ModelName']]}/invocations"
        try:
            async with self._session.post(url, data=payload, headers=headers) as resp:
                body = await resp.read()
                status = resp.status
        except aiohttp.ClientError as exc:
            raise _JobFailed(f"ClientError: the model container could not be reached: {type(exc).__name__}") from None
        if not 200 <= status < 300:
            with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
                body = json.loads(body)["message"].encode()
            raise _JobFailed(f"ClientError: Bad HTTP status received from algorithm: {status}: "
                             f"{body.decode('utf-8', 'replace')[:300]}")
        return body
