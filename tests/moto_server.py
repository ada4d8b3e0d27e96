"""A moto server for tests of the real aiobotocore code: one per session, reset before every test.

Use ``moto_url`` (the endpoint URL; fake credentials and region are in the environment while it runs),
``boto3_client`` for setup and assertions, and ``create_bucket`` / ``create_queues`` for the resources::

    from tests.moto_server import create_bucket, create_queues, moto_url, moto_server  # noqa: F401
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

REGION = "us-east-1"
_FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_ENDPOINT_URL_SAGEMAKER": "http://127.0.0.1:9",  # readiness checks never ask real AWS (see conftest)
}
# Variables that could send a test to real AWS or change its clients' behaviour.
_CLEARED_ENV = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Start moto once for the session (start-up takes ~1 s); yield its URL."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a log line per request otherwise
    saved = {name: os.environ.get(name) for name in (*_FAKE_ENV, *_CLEARED_ENV)}
    os.environ.update(_FAKE_ENV)
    for name in _CLEARED_ENV:
        os.environ.pop(name, None)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def moto_url(moto_server: str) -> str:
    """The moto server's URL, with its state reset so that each test starts empty."""
    request = urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()
    return moto_server


def boto3_client(service: str, url: str) -> Any:
    """A plain boto3 client against moto, for setup and assertions (no retries: moto answers 500 to what
    it does not implement, which botocore would otherwise retry)."""
    return boto3.client(service, endpoint_url=url, region_name=REGION,
                        config=Config(retries={"total_max_attempts": 1}))


def create_bucket(url: str, name: str = "router-state") -> str:
    """Create an S3 bucket; its name."""
    boto3_client("s3", url).create_bucket(Bucket=name)
    return name


@dataclass(frozen=True)
class Queues:
    """A work queue whose redrive policy moves a message to ``dlq_url`` after ``max_receive_count`` receives."""

    queue_url: str
    dlq_url: str
    max_receive_count: int


def create_queues(url: str, name: str = "router-jobs", *, max_receive_count: int = 10,
                  visibility_timeout_s: int = 30) -> Queues:
    """Create ``name`` with a redrive policy to ``name-dlq``."""
    sqs = boto3_client("sqs", url)
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)})
    queue_url = sqs.create_queue(QueueName=name, Attributes={
        "RedrivePolicy": redrive, "VisibilityTimeout": str(visibility_timeout_s)})["QueueUrl"]
    return Queues(queue_url=queue_url, dlq_url=dlq_url, max_receive_count=max_receive_count)
