"""The router with `sagemaker` backends (aiobotocore against the SageMaker Runtime emulator), and the
drop-in check: an unmodified boto3 `sagemaker-runtime` client pointed at the router."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from router.demo.model import FraudModel
from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, serve_router, until
from tests.sm_emulator import SageMakerRuntimeEmulator

ROW = "120.5,2,0.8,350,7,30"
pytestmark = pytest.mark.usefixtures("aws_env")


def sagemaker_config(emulator_url: str, *, first: str = "realtime") -> str:
    second = "serverless" if first == "realtime" else "realtime"
    return f"""
backends:
  rt: {{kind: sagemaker, endpoint: fraud-rt, endpoint_url: "{emulator_url}", region: us-east-1, timeout: 2s}}
  sls: {{kind: sagemaker, endpoint: fraud-sls, endpoint_url: "{emulator_url}", region: us-east-1, timeout: 2s,
         serverless: {{idle_after: 10m, cold_start: 3s}}}}
models:
  fraud:
    lanes: {{realtime: rt, serverless: sls}}
    default: {{lane: {first}, fallback: [{second}]}}
"""


@pytest.fixture
async def emulated() -> AsyncIterator[SageMakerRuntimeEmulator]:
    async with ModelServer() as rt, ModelServer() as sls, SageMakerRuntimeEmulator() as emulator:
        emulator.add_endpoint("fraud-rt", rt.url, variant="Primary")
        emulator.add_endpoint("fraud-sls", sls.url, variant="AllTraffic")
        yield emulator


async def post(http: aiohttp.ClientSession, router: RunningRouter, body: str = ROW, **headers: str) -> tuple[
        int, Any, bytes]:
    async with http.post(router.endpoint("fraud"), data=body, headers={"Content-Type": "text/csv", **headers}) as r:
        return r.status, r.headers.copy(), await r.read()


async def test_sagemaker_backend_passes_sagemaker_headers_through(emulated: SageMakerRuntimeEmulator,
                                                                  http: Any) -> None:
    async with serve_router(sagemaker_config(emulated.url)) as router:
        status, headers, body = await post(http, router, **{
            "X-Amzn-SageMaker-Custom-Attributes": "c=1", "X-Amzn-SageMaker-Inference-Id": "inf-42",
            "X-Amzn-SageMaker-Target-Variant": "Primary", "Accept": "text/csv"})
    assert status == 200
    assert float(body) == pytest.approx(FraudModel.load().predict([[float(x) for x in ROW.split(",")]])[0], abs=1e-6)
    assert headers["X-Amzn-Invoked-Production-Variant"] == "Primary"
    (call,) = emulated.calls_to("fraud-rt")
    assert (call.custom_attributes, call.inference_id, call.target_variant, call.accept) == (
        "c=1", "inf-42", "Primary", "text/csv")


@pytest.mark.parametrize(("fault", "reason"), [("throttle", "throttled"), ("unavailable", "unavailable")])
async def test_sagemaker_throttling_and_unavailability_fall_back(emulated: SageMakerRuntimeEmulator, http: Any,
                                                                 fault: Any, reason: str) -> None:
    async with serve_router(sagemaker_config(emulated.url)) as router:
        emulated.inject("fraud-rt", fault)
        status, headers, _ = await post(http, router)
        assert (status, headers["X-Router-Backend"]) == (200, "sls")
        assert router.runtime.metrics.registry.get_sample_value(
            "router_fallbacks_total", {"model": "fraud", "from_backend": "rt", "to_backend": "sls", "reason": reason}
        ) == 1
        if fault == "throttle":
            configured = router.runtime.routing.config.backends["rt"].max_concurrency
            assert router.runtime.tracker.trackers["rt"].capacity == configured // 2  # throttling halves it


async def test_model_not_ready_on_serverless_falls_back_and_marks_it_cold(emulated: SageMakerRuntimeEmulator,
                                                                          http: Any) -> None:
    async with serve_router(sagemaker_config(emulated.url, first="serverless")) as router:
        await post(http, router)  # warms serverless
        assert not router.runtime.tracker.trackers["sls"].cold(router.runtime.clock())
        emulated.inject("fraud-sls", "not_ready")
        status, headers, _ = await post(http, router)
        assert (status, headers["X-Router-Backend"]) == (200, "rt")
        assert router.runtime.tracker.trackers["sls"].cold(router.runtime.clock())


async def test_sagemaker_model_error_is_424_with_the_original_status_and_not_retried(
        emulated: SageMakerRuntimeEmulator, http: Any) -> None:
    async with serve_router(sagemaker_config(emulated.url)) as router:
        status, headers, body = await post(http, router, "1,2,three")
    assert status == 424
    assert headers["x-amzn-ErrorType"] == "ModelError"
    assert json.loads(body)["OriginalStatusCode"] == 400
    assert emulated.calls_to("fraud-sls") == []


async def test_throttled_everywhere_is_a_throttling_error_with_retry_after(emulated: SageMakerRuntimeEmulator,
                                                                           http: Any) -> None:
    async with serve_router(sagemaker_config(emulated.url)) as router:
        emulated.inject("fraud-rt", "throttle")
        emulated.inject("fraud-sls", "throttle")
        status, headers, _ = await post(http, router)
    assert status == 429
    assert headers["x-amzn-ErrorType"] == "ThrottlingException"
    assert "Retry-After" in headers


# --- drop-in: boto3 against the router --------------------------------------------------------------


def boto3_client(router: RunningRouter) -> Any:
    return boto3.client("sagemaker-runtime", endpoint_url=router.url, region_name="us-east-1",
                        config=Config(retries={"total_max_attempts": 1}))


HTTP_CONFIG = """
server: {{admin_token: x-admin-token}}
backends:
  rt: {{kind: http, url: "{rt}/invocations", max_concurrency: 1}}
models:
  fraud:
    lanes: {{realtime: rt}}
    policy: [shed-low]
policies:
  shed-low: {{type: shed, params: {{below_urgency: normal}}}}
"""


async def test_boto3_invoke_endpoint_through_the_router_gets_the_prediction() -> None:
    async with ModelServer() as rt, serve_router(HTTP_CONFIG.format(rt=rt.url)) as router:
        client = boto3_client(router)
        response = await asyncio.to_thread(
            client.invoke_endpoint, EndpointName="fraud", Body=ROW.encode(), ContentType="text/csv",
            Accept="text/csv", CustomAttributes="k=v", InferenceId="boto-1")
        body = response["Body"].read()
        assert float(body) == pytest.approx(FraudModel.load().predict([[float(x) for x in ROW.split(",")]])[0],
                                            abs=1e-6)
        assert response["ContentType"].startswith("text/csv")
        assert response["InvokedProductionVariant"] == "rt"
        assert response["CustomAttributes"] == "k=v"
        assert response["ResponseMetadata"]["HTTPHeaders"]["x-router-lane"] == "realtime"
        assert rt.last_headers["X-Amzn-SageMaker-Inference-Id"] == "boto-1"


async def test_boto3_sees_its_own_exceptions_for_router_errors() -> None:
    async with ModelServer() as rt, serve_router(HTTP_CONFIG.format(rt=rt.url)) as router:
        client = boto3_client(router)

        def invoke(**kw: Any) -> Any:
            return client.invoke_endpoint(**{"EndpointName": "fraud", "Body": ROW.encode(),
                                             "ContentType": "text/csv", **kw})

        with pytest.raises(client.exceptions.ModelError) as model_error:
            await asyncio.to_thread(invoke, Body=b"1,2,three")
        assert model_error.value.response["OriginalStatusCode"] == 400

        with pytest.raises(ClientError) as missing:
            await asyncio.to_thread(invoke, EndpointName="nope")
        assert missing.value.response["Error"]["Code"] == "ValidationError"
        assert missing.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404

        # saturate the only backend, then a low-urgency request is shed: boto3 sees a throttling error
        # the low-urgency client is built first: building a boto3 client can take longer than the busy call
        low_client = boto3_client(router)
        low_client.meta.events.register("before-sign.sagemaker-runtime.InvokeEndpoint",
                                        lambda request, **_: request.headers.__setitem__("X-Urgency", "low"))

        def low() -> Any:
            return low_client.invoke_endpoint(EndpointName="fraud", Body=ROW.encode(), ContentType="text/csv")

        rt.latency_s = 2.0
        busy = asyncio.create_task(asyncio.to_thread(invoke))
        await until(lambda: rt.inflight == 1)

        with pytest.raises(ClientError) as shed:
            await asyncio.to_thread(low)
        assert shed.value.response["Error"]["Code"] == "ThrottlingException"
        assert shed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        await busy
