"""The sagemaker-async backend through the router's async lane: S3 and SNS -> SQS on moto's server, the
SageMaker Runtime emulator's InvokeEndpointAsync in front of the demo model server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from router.backends.sagemaker_async import parse_notice
from router.config import parse_config
from router.demo.model_server import ModelServer
from router.yamlpos import ConfigError
from tests.conftest import RunningRouter, serve_router
from tests.moto_server import boto3_client, create_bucket, moto_server, moto_url  # noqa: F401
from tests.sm_emulator import AsyncConfig, SageMakerRuntimeEmulator
from tests.test_async_lane import expected, rows, until_done

BUCKET = "sm-async"
ENDPOINT = "fraud-async"


def sns_queue(url: str) -> tuple[str, str, str]:
    """Success and error topics, both delivering to one SQS queue: (success arn, error arn, queue url)."""
    sns, sqs = boto3_client("sns", url), boto3_client("sqs", url)
    queue_url = sqs.create_queue(QueueName="sm-async-notices")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    topics = []
    for name in ("sm-async-success", "sm-async-error"):
        arn = sns.create_topic(Name=name)["TopicArn"]
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
        topics.append(arn)
    return topics[0], topics[1], queue_url


@pytest.fixture
async def emulator(moto_url: str, model: ModelServer) -> AsyncIterator[SageMakerRuntimeEmulator]:  # noqa: F811
    create_bucket(moto_url, BUCKET)
    async with SageMakerRuntimeEmulator(aws_endpoint_url=moto_url) as emu:
        yield emu


def add_endpoint(emu: SageMakerRuntimeEmulator, model: ModelServer, topics: tuple[str, str] | None = None) -> None:
    success, error = topics or (None, None)
    emu.add_endpoint(ENDPOINT, model.url, async_config=AsyncConfig(
        output_path=f"s3://{BUCKET}/outputs", failure_path=f"s3://{BUCKET}/failures",
        success_topic=success, error_topic=error))


def config(tmp_path: Path, emu: SageMakerRuntimeEmulator, *, poll: str = "50ms", max_poll: str = "200ms",
           queue_url: str | None = None) -> str:
    moto = emu.aws_endpoint_url
    notices = f', notifications: {{queue_url: "{queue_url}", endpoint_url: "{moto}", wait: 1s}}' if queue_url else ""
    return f"""
state: {{kind: local, path: "{tmp_path}"}}
jobs: {{workers: 2, lease: 5s, max_attempts: 3, backoff: 10ms, max_backoff: 50ms, poll_interval: 20ms}}
backends:
  sm: {{kind: sagemaker-async, endpoint: {ENDPOINT}, endpoint_url: "{emu.url}", s3_endpoint_url: "{moto}",
        input_location: "s3://{BUCKET}/inputs/", poll: {poll}, max_poll: {max_poll}{notices}}}
models:
  fraud:
    lanes: {{async: sm}}
"""


async def submit(http: Any, router: RunningRouter, body: str) -> str:
    async with http.post(router.endpoint("fraud"), data=body, headers={
            "Content-Type": "text/csv", "Prefer": "respond-async"}) as r:
        assert r.status == 202
        assert r.headers["X-Router-Backend"] == "sm"
        return str((await r.json())["job_id"])


def keys(url: str, prefix: str) -> list[str]:
    listing = boto3_client("s3", url).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


async def test_a_job_on_a_sagemaker_async_endpoint_succeeds_with_the_models_output(
        tmp_path: Path, http: Any, moto_url: str, model: ModelServer,  # noqa: F811
        emulator: SageMakerRuntimeEmulator) -> None:
    add_endpoint(emulator, model)
    async with serve_router(config(tmp_path, emulator)) as router:
        job_id = await submit(http, router, rows(20))
        job = await until_done(http, router, job_id)
        assert (job["status"], job["attempts"]) == ("succeeded", 1)
        async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
            assert r.status == 200
            assert [float(x) for x in (await r.text()).split()] == pytest.approx(expected(20), abs=1e-6)
    [call] = emulator.calls
    assert (call.input_location or "").startswith(f"s3://{BUCKET}/inputs/")
    assert call.content_type == "text/csv"
    assert call.headers["X-Amzn-SageMaker-InvocationTimeoutSeconds"] == "900"  # jobs.invocation_timeout
    assert call.headers["X-Amzn-SageMaker-RequestTTLSeconds"] == "3600"  # the backend's timeout
    assert keys(moto_url, "inputs/") == []  # the uploaded payload is removed once the output is in
    assert len(keys(moto_url, "outputs/")) == 1


async def test_a_failure_object_fails_the_job_with_the_models_reason_and_no_retry(
        tmp_path: Path, http: Any, moto_url: str, model: ModelServer,  # noqa: F811
        emulator: SageMakerRuntimeEmulator) -> None:
    add_endpoint(emulator, model)
    async with serve_router(config(tmp_path, emulator)) as router:
        job_id = await submit(http, router, "not,a,fraud,row")
        job = await until_done(http, router, job_id)
    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert job["error"]["type"] == "ModelError"
    [failure_key] = keys(moto_url, "failures/")
    reason = boto3_client("s3", moto_url).get_object(Bucket=BUCKET, Key=failure_key)["Body"].read().decode()
    assert json.loads(reason)["message"]  # the model server's own 400 answer
    assert reason[:100] in job["error"]["message"]
    assert len(emulator.calls) == 1
    assert keys(moto_url, "inputs/") == []


async def test_completion_is_seen_through_sns_and_sqs_without_waiting_for_the_next_s3_poll(
        tmp_path: Path, http: Any, moto_url: str, model: ModelServer,  # noqa: F811
        emulator: SageMakerRuntimeEmulator) -> None:
    success, error, queue_url = sns_queue(moto_url)
    add_endpoint(emulator, model, (success, error))
    emulator.set_delay(ENDPOINT, 0.5)  # not done at the first S3 check; the next one is 20 s later
    async with serve_router(config(tmp_path, emulator, poll="20s", max_poll="20s", queue_url=queue_url)) as router:
        started = time.monotonic()
        ok_id = await submit(http, router, rows(3))
        bad_id = await submit(http, router, "not,a,fraud,row")
        ok, bad = await until_done(http, router, ok_id), await until_done(http, router, bad_id)
        elapsed = time.monotonic() - started
    assert ok["status"] == "succeeded"
    assert (bad["status"], bad["error"]["type"]) == ("failed", "ModelError")
    assert elapsed < 6.0  # far below the 20 s poll: the notifications woke the workers
    assert [n["invocationStatus"] for n in emulator.notifications] in (["Completed", "Failed"],
                                                                       ["Failed", "Completed"])


async def test_throttled_invocations_are_retried_until_the_job_succeeds(
        tmp_path: Path, http: Any, moto_url: str, model: ModelServer,  # noqa: F811
        emulator: SageMakerRuntimeEmulator) -> None:
    add_endpoint(emulator, model)
    emulator.inject(ENDPOINT, "throttle", times=2)  # 400 ThrottlingException from InvokeEndpointAsync
    async with serve_router(config(tmp_path, emulator)) as router:
        job_id = await submit(http, router, rows(2))
        job = await until_done(http, router, job_id)
    assert (job["status"], job["attempts"]) == ("succeeded", 3)
    assert len(emulator.calls) == 3
    assert keys(moto_url, "inputs/") == []  # each attempt's upload is removed, the refused ones too


def test_a_sagemaker_async_backend_on_a_sync_lane_is_refused_with_its_position() -> None:
    text = """
backends:
  sm: {kind: sagemaker-async, endpoint: fraud-async, input_location: "s3://bucket/in"}
models:
  fraud:
    lanes: {realtime: sm, async: sm}
notifications: {sns_topic_arn: "arn:aws:sns:us-east-1:123456789012:jobs"}
"""
    with pytest.raises(ConfigError) as info:
        parse_config(text, "router.yaml")
    issues = {i.path: (i.line, i.message) for i in info.value.issues}
    assert issues["models.fraud.lanes.realtime"][0] == 6
    assert "serves only the async lane" in issues["models.fraud.lanes.realtime"][1]
    assert "models.fraud.lanes.async" not in issues
    assert issues["notifications"] == (7, "SNS job notifications need state kind 'aws'")


def test_sagemaker_async_config_defaults_and_limits() -> None:
    base = 'backends: {sm: {kind: sagemaker-async, endpoint: e, input_location: "s3://bucket/in"%s}}\n' \
           "models: {m: {lanes: {async: sm}}}\n"
    cfg = parse_config(base % "")
    sm = cfg.backends["sm"]
    assert (sm.poll, sm.max_poll, sm.timeout) == (1.0, 30.0, 3600.0)  # type: ignore[union-attr]
    for bad in (', poll: 5s, max_poll: 1s', ', timeout: 7h', ', serverless: {}', ', input_location: "https://x/y"'):
        with pytest.raises(ConfigError):
            parse_config(base % bad)


def test_notifications_parse_from_an_sns_envelope_and_from_raw_delivery() -> None:
    notice = {"invocationStatus": "Failed", "inferenceId": "abc", "failureReason": "ClientError: boom",
              "responseParameters": {"contentType": "text/plain", "failureLocation": "s3://b/f/abc-error.out"}}
    envelope = json.dumps({"Type": "Notification", "Message": json.dumps(notice)})
    for body in (envelope, json.dumps(notice)):
        parsed = parse_notice(body)
        assert parsed is not None
        assert (parsed.inference_id, parsed.status, parsed.failure_reason) == ("abc", "Failed", "ClientError: boom")
        assert parsed.failure_location == "s3://b/f/abc-error.out"
    assert parse_notice("not json") is None
    assert parse_notice(json.dumps({"Type": "Notification", "Message": "{}"})) is None


async def test_a_large_payload_is_streamed_from_storage_to_the_input_location(
        tmp_path: Path, http: Any, moto_url: str, model: ModelServer,  # noqa: F811
        emulator: SageMakerRuntimeEmulator) -> None:
    add_endpoint(emulator, model)
    body = rows(450_000)  # ~9.5 MB: over the 8 MiB above which a worker streams instead of reading it whole
    async with serve_router(config(tmp_path, emulator)) as router:
        job = await until_done(http, router, await submit(http, router, body))
    # the whole payload reached the model container through S3; the demo model refuses a body that large
    assert model.last_headers["Content-Length"] == str(len(body))
    assert (job["status"], job["attempts"]) == ("failed", 1)  # a model error: not retried
    assert job["error"]["type"] == "ModelError"
