"""Honest readiness: a backend that cannot work (no AWS credentials, an unknown SageMaker endpoint, a refused
connection) shows in ``/readyz`` with the reason, is logged once, and readiness comes back when it works."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, free_port, serve_router, until
from tests.moto_server import boto3_client, moto_server, moto_url

__all__ = ["moto_server", "moto_url"]  # fixtures, re-exported for pytest

ROW = "120.5,2,0.8,350,7,30"


async def ready(http: aiohttp.ClientSession, router: RunningRouter) -> tuple[int, dict[str, Any]]:
    async with http.get(router.url + "/readyz") as r:
        return r.status, await r.json()


def log_events(err: str, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing in botocore's credential chain: no variables, no files, no instance metadata."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


async def test_a_sagemaker_backend_without_aws_credentials_is_not_ready_says_why_once_and_recovers(
        tmp_path: Path, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    no_aws_credentials(monkeypatch, tmp_path)
    # the control plane answers nothing here: once credentials exist, the endpoint stays unverified (usable)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", f"http://127.0.0.1:{free_port()}")
    config = """
backends:
  sm: {kind: sagemaker, endpoint: fraud-live, endpoint_url: "http://127.0.0.1:9", region: us-east-1}
models:
  fraud: {lanes: {realtime: sm}}
"""
    async with serve_router(config) as router:
        status, body = await ready(http, router)
        assert status == 503
        assert body["status"] == "not_ready"
        assert body["models_down"] == ["fraud"]
        assert "no AWS credentials found" in body["backends_unusable"]["sm"]
        assert body["reasons"] == ["model 'fraud' has no backend that can work"]
        checks = router.runtime.backend_checks
        first = checks.results["sm"]
        await until(lambda: checks.results["sm"] is not first, 10.0)  # probed again: still no credentials

        for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
            monkeypatch.setenv(name, value)
        await until(lambda: checks.results["sm"].usable, 10.0)
        status, body = await ready(http, router)
        assert (status, body["status"], body["backends_unusable"]) == (200, "ready", {})
        assert "not verified" in body["backends_unverified"]["sm"]

    err = capfd.readouterr().err
    unusable = log_events(err, "backend_unusable")
    assert len(unusable) == 1  # one clear line, not one per probe
    assert (unusable[0]["backend"], unusable[0]["level"]) == ("sm", "error")
    assert "no AWS credentials" in unusable[0]["reason"]
    assert len(log_events(err, "backend_usable_again")) == 1


async def test_a_refused_http_backend_degrades_a_model_with_a_fallback_and_downs_one_without(
        http: aiohttp.ClientSession) -> None:
    port = free_port()
    async with ModelServer() as alive:
        config = f"""
backends:
  dead: {{kind: http, url: "http://127.0.0.1:{port}/invocations"}}
  alive: {{kind: http, url: "{alive.url}/invocations"}}
models:
  fraud: {{lanes: {{realtime: dead, serverless: alive}}}}
"""
        solo = config + "  solo: {lanes: {realtime: dead}}\n"
        async with serve_router(config) as router:
            status, body = await ready(http, router)
            assert (status, body["status"], body["models_down"]) == (200, "degraded", [])
            refused = f"connection refused at 127.0.0.1:{port}: nothing listens there"
            assert body["backends_unusable"] == {"dead": refused}
            async with http.post(router.endpoint("fraud"), data=ROW, headers={"Content-Type": "text/csv"}) as r:
                assert (r.status, r.headers["X-Router-Backend"]) == (200, "alive")  # it still serves

        async with serve_router(solo) as router:
            status, body = await ready(http, router)
            assert (status, body["status"], body["models_down"]) == (503, "not_ready", ["solo"])
            registry = router.runtime.metrics.registry
            assert registry.get_sample_value("router_backend_usable", {"backend": "dead"}) == 0
            async with ModelServer(port=port):  # the backend comes up: readiness follows
                await until(lambda: router.runtime.backend_checks.results["dead"].usable, 10.0)
                status, body = await ready(http, router)
                assert (status, body["status"]) == (200, "ready")
            assert registry.get_sample_value("router_backend_usable", {"backend": "dead"}) == 1


async def test_an_unknown_sagemaker_endpoint_is_named_in_readyz(
        moto_url: str, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch) -> None:
    sagemaker = boto3_client("sagemaker", moto_url)
    sagemaker.create_model(ModelName="fraud", ExecutionRoleArn="arn:aws:iam::123456789012:role/sm",
                           PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/fraud:1"})
    sagemaker.create_endpoint_config(EndpointConfigName="fraud", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "fraud", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large"}])
    sagemaker.create_endpoint(EndpointName="fraud-live", EndpointConfigName="fraud")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", moto_url)  # the control plane: moto's
    config = """
backends:
  live: {kind: sagemaker, endpoint: fraud-live, endpoint_url: "http://127.0.0.1:9", region: us-east-1}
  typo: {kind: sagemaker, endpoint: fraud-lvie, endpoint_url: "http://127.0.0.1:9", region: us-east-1}
models:
  fraud: {lanes: {realtime: live, serverless: typo}}
"""
    async with serve_router(config) as router:
        status, body = await ready(http, router)
    assert (status, body["status"]) == (200, "degraded")
    assert body["backends_unusable"] == {"typo": "SageMaker endpoint 'fraud-lvie' does not exist in us-east-1"}
    assert body["backends_unverified"] == {}  # fraud-live was found InService
