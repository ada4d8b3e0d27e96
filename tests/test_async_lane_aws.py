"""The async lane in the scale-out mode: payloads, results and job records in S3, the queue in SQS with a
dead-letter queue, all on moto's server; the router's real aiobotocore code runs against it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, serve_router
from tests.moto_server import boto3_client, create_bucket, create_queues, moto_server, moto_url  # noqa: F401
from tests.test_async_lane import config, expected, rows, until_done


def aws_config(rt: ModelServer, tmp_path: Path, url: str) -> str:
    bucket = create_bucket(url)
    queues = create_queues(url, max_receive_count=10, visibility_timeout_s=5)
    state = (f'state: {{kind: aws, bucket: {bucket}, prefix: "router/", queue_url: "{queues.queue_url}", '
             f'dlq_url: "{queues.dlq_url}", endpoint_url: "{url}", region: us-east-1}}')
    return config(rt, tmp_path).replace(f'state: {{kind: local, path: "{tmp_path}"}}', state)


async def test_a_job_runs_through_s3_and_sqs(tmp_path: Path, http: Any, moto_url: str) -> None:  # noqa: F811
    async with ModelServer() as rt, serve_router(aws_config(rt, tmp_path, moto_url)) as router:
        async with http.post(router.endpoint("fraud"), data=rows(200), headers={
                "Content-Type": "text/csv", "Prefer": "respond-async"}) as r:
            assert r.status == 202
            job_id = (await r.json())["job_id"]
        job = await until_done(http, router, job_id)
        assert (job["status"], job["attempts"]) == ("succeeded", 1)
        async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
            assert r.status == 200
            assert [float(x) for x in (await r.text()).split()] == pytest.approx(expected(200), abs=1e-6)
    keys = {o["Key"] for o in boto3_client("s3", moto_url).list_objects_v2(Bucket="router-state")["Contents"]}
    assert {f"router/inputs/{job_id}", f"router/results/{job_id}", f"router/jobs/{job_id}.json"} <= keys


async def test_a_poison_job_lands_in_the_dead_letter_queue(tmp_path: Path, http: Any,
                                                           moto_url: str) -> None:  # noqa: F811
    async with ModelServer(fail_status=503) as rt, serve_router(aws_config(rt, tmp_path, moto_url)) as router:
        async with http.post(router.endpoint("fraud"), data=rows(200), headers={
                "Content-Type": "text/csv", "Prefer": "respond-async"}) as r:
            job_id = (await r.json())["job_id"]
        job = await until_done(http, router, job_id)
        assert (job["status"], job["attempts"]) == ("failed", 3)
        assert rt.requests == 3
    sqs = boto3_client("sqs", moto_url)
    dlq = sqs.get_queue_url(QueueName="router-jobs-dlq")["QueueUrl"]
    messages = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages", [])
    assert [m["Body"] for m in messages] == [job_id]


async def test_boto3_invoke_endpoint_async_with_an_s3_input_location(tmp_path: Path, http: Any,
                                                                     moto_url: str) -> None:  # noqa: F811
    async with ModelServer() as rt, serve_router(aws_config(rt, tmp_path, moto_url)) as router:
        s3 = boto3_client("s3", moto_url)
        s3.put_object(Bucket="router-state", Key="router/uploads/batch-1.csv", Body=rows(30).encode())

        def invoke(location: str) -> Any:
            smr = boto3.client("sagemaker-runtime", endpoint_url=router.url, region_name="us-east-1",
                               config=Config(retries={"total_max_attempts": 1}))
            return smr.invoke_endpoint_async(EndpointName="fraud", InputLocation=location, ContentType="text/csv")

        response = await asyncio.to_thread(invoke, "s3://router-state/router/uploads/batch-1.csv")
        job_id = response["OutputLocation"].split("/")[-2]
        job = await until_done(http, router, job_id)
        assert job["status"] == "succeeded"
        async with http.get(f"{router.url}/jobs/{job_id}/result") as r:
            assert [float(x) for x in (await r.text()).split()] == pytest.approx(expected(30), abs=1e-6)
        for bad in ("https://router-state/router/uploads/batch-1.csv", "s3://other-bucket/router/x.csv",
                    "s3://router-state/elsewhere/x.csv", "s3://router-state/router/missing.csv"):
            async with http.post(router.url + "/endpoints/fraud/async-invocations",
                                 headers={"X-Amzn-SageMaker-InputLocation": bad}) as r:
                assert r.status == 400, bad
                assert r.headers["x-amzn-ErrorType"] == "ValidationError"


async def accept_job(http: Any, router: RunningRouter) -> str:
    async with http.post(router.endpoint("fraud"), data=rows(200), headers={
            "Content-Type": "text/csv", "Prefer": "respond-async"}) as r:
        assert r.status == 202
        return str((await r.json())["job_id"])


async def test_a_finished_job_is_published_to_the_sns_topic(tmp_path: Path, http: Any,
                                                            moto_url: str) -> None:  # noqa: F811
    sns, sqs = boto3_client("sns", moto_url), boto3_client("sqs", moto_url)
    topic = sns.create_topic(Name="router-job-events")["TopicArn"]
    queue_url = sqs.create_queue(QueueName="job-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    async with ModelServer() as rt:
        text = aws_config(rt, tmp_path, moto_url) + f'notifications: {{sns_topic_arn: "{topic}"}}\n'
        async with serve_router(text) as router:
            job_id = await accept_job(http, router)
            job = await until_done(http, router, job_id)

            def receive() -> list[Any]:
                got: list[Any] = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=5).get("Messages", [])
                return got

            [message] = await asyncio.to_thread(receive)
    envelope = json.loads(message["Body"])
    published = json.loads(envelope["Message"])
    assert published == {**job, "status_url": f"/jobs/{job_id}"}
    assert published["status"] == "succeeded"
    assert envelope["MessageAttributes"]["status"] == {"Type": "String", "Value": "succeeded"}
    assert envelope["MessageAttributes"]["model"] == {"Type": "String", "Value": "fraud"}


async def test_a_failed_sns_publish_is_logged_and_never_fails_the_job(tmp_path: Path, http: Any,
                                                                      moto_url: str) -> None:  # noqa: F811
    missing = "arn:aws:sns:us-east-1:123456789012:no-such-topic"
    async with ModelServer() as rt:
        text = aws_config(rt, tmp_path, moto_url) + f'notifications: {{sns_topic_arn: "{missing}", attempts: 2}}\n'
        async with serve_router(text) as router:
            job_id = await accept_job(http, router)
            job = await until_done(http, router, job_id)
            topic = router.runtime.job_lane.events.topic if router.runtime.job_lane else None
            assert topic is not None
            assert await topic.notify({"job_id": job_id, "status": "succeeded"}) is False
    assert job["status"] == "succeeded"
