"""Callers identified by the SigV4 signature every boto3 client sends: the access key id names the caller
(tenant, maximum urgency), the signature checked with its secret proves it, over the body it covers."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, serve_router

ROW = b"120.5,2,0.8,350,7,30"
KEY_A, SECRET_A = "AKIATEAMA00000000001", "team-a-secret-access-key-0001"
KEY_B, SECRET_B = "AKIATEAMB00000000002", "team-b-secret-access-key-0002"
API_A, API_B = "team-a-api-key-0001", "team-b-api-key-0002"


def config(url: str, state: Path) -> str:
    return f"""
state: {{kind: local, path: "{state}"}}
jobs: {{workers: 1, poll_interval: 20ms}}
callers:
  - {{aws_access_key_id: {KEY_A}, aws_secret_access_key: {SECRET_A}, api_key: {API_A}, tenant: team-a,
      max_urgency: critical}}
  - {{aws_access_key_id: {KEY_B}, aws_secret_access_key: {SECRET_B}, api_key: {API_B}, tenant: team-b,
      max_urgency: normal}}
backends:
  rt: {{kind: http, url: "{url}/invocations"}}
models:
  fraud:
    lanes: {{realtime: rt, async: rt}}
    limits: {{realtime: 1MB}}
    policy: [big-goes-async]
policies:
  big-goes-async:
    type: rules
    params:
      - {{when: {{payload_bytes: {{gt: 100KB}}, accepts_async: true}}, route: async}}
      - {{route: realtime}}
"""


def client(router: RunningRouter, key: str, secret: str, urgency: str | None = None) -> Any:
    smr = boto3.client("sagemaker-runtime", endpoint_url=router.url, region_name="us-east-1",
                       aws_access_key_id=key, aws_secret_access_key=secret,
                       config=Config(retries={"total_max_attempts": 1}))
    if urgency is not None:  # boto3 has no parameter for it: add the header before signing, as a user would
        def add_urgency(request: AWSRequest, **_: Any) -> None:
            request.headers["X-Urgency"] = urgency

        smr.meta.events.register("before-sign.sagemaker-runtime.*", add_urgency)
    return smr


def clamped(router: RunningRouter) -> float:
    return router.runtime.metrics.registry.get_sample_value("router_urgency_clamped_total", {"model": "fraud"}) or 0


def signed_headers(router: RunningRouter, body: bytes, *, key: str = KEY_A, secret: str = SECRET_A,
                   when: datetime.datetime | None = None, **headers: str) -> dict[str, str]:
    """What botocore signs for a POST of ``body`` (``when`` instead of now, for an old signature)."""
    request = AWSRequest(method="POST", url=router.endpoint("fraud"), data=body,
                         headers={"Content-Type": "text/csv", **headers})
    signer = SigV4Auth(Credentials(key, secret), "sagemaker", "us-east-1")
    if when is None:
        signer.add_auth(request)
    else:  # what add_auth does, at another time
        stamp = when.strftime("%Y%m%dT%H%M%SZ")
        request.context["timestamp"] = stamp
        request.headers["X-Amz-Date"] = stamp
        canonical = signer.canonical_request(request)
        signature = signer.signature(signer.string_to_sign(request, canonical), request)
        request.headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={signer.scope(request)}, "
            f"SignedHeaders={signer.signed_headers(signer.headers_to_sign(request))}, Signature={signature}")
    return dict(request.headers.items())


async def test_boto3_callers_are_identified_by_their_access_key_and_get_their_tenant_and_urgency(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with ModelServer() as rt, serve_router(config(rt.url, tmp_path)) as router:
        team_a = client(router, KEY_A, SECRET_A, urgency="critical")
        team_b = client(router, KEY_B, SECRET_B, urgency="critical")
        for smr in (team_a, team_b):
            answer = await asyncio.to_thread(smr.invoke_endpoint, EndpointName="fraud", Body=ROW,
                                             ContentType="text/csv")
            assert 0.0 < float(answer["Body"].read()) < 1.0
        assert clamped(router) == 1  # team-b may claim at most normal; team-a critical
        job = await asyncio.to_thread(team_a.invoke_endpoint_async, EndpointName="fraud", Body=ROW,
                                      ContentType="text/csv")
        job_id = job["ResponseMetadata"]["HTTPHeaders"]["location"].rsplit("/", 1)[1]
        async with http.get(f"{router.url}/jobs/{job_id}", headers={"X-Api-Key": API_B}) as r:
            assert r.status == 404  # another tenant's job
        async with http.get(f"{router.url}/jobs/{job_id}", headers={"X-Api-Key": API_A}) as r:
            assert r.status == 200  # team-a's
        assert rt.requests >= 2


async def test_a_wrong_secret_is_403_in_sagemakers_shape_and_reaches_no_model(tmp_path: Path) -> None:
    async with ModelServer() as rt, serve_router(config(rt.url, tmp_path)) as router:
        forger = client(router, KEY_A, SECRET_B)  # team-a's key id, someone else's secret
        with pytest.raises(ClientError) as caught:
            await asyncio.to_thread(forger.invoke_endpoint, EndpointName="fraud", Body=ROW, ContentType="text/csv")
        error = caught.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 403
        assert error["Error"]["Code"] == "InvalidSignatureException"
        assert error["Error"]["Message"].startswith("The request signature we calculated does not match")
        with pytest.raises(ClientError) as caught:
            await asyncio.to_thread(forger.invoke_endpoint_async, EndpointName="fraud", Body=ROW,
                                    ContentType="text/csv")
        assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
        unknown = client(router, "AKIAUNKNOWN000000000", SECRET_A)
        with pytest.raises(ClientError) as caught:
            await asyncio.to_thread(unknown.invoke_endpoint, EndpointName="fraud", Body=ROW, ContentType="text/csv")
        assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"
        assert rt.requests == 0
        assert router.runtime.job_lane is not None
        assert sum((await router.runtime.job_lane.jobs.stats(0.0)).jobs.values()) == 0


async def test_a_body_the_signature_does_not_cover_is_403_sync_and_streamed_to_storage(
        tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with ModelServer() as rt, serve_router(config(rt.url, tmp_path)) as router:
        async with http.post(router.endpoint("fraud"), data=ROW, headers=signed_headers(router, ROW)) as r:
            assert r.status == 200  # signed by hand with botocore: accepted
        tampered = ROW.replace(b"120.5", b"999.9")
        async with http.post(router.endpoint("fraud"), data=tampered, headers=signed_headers(router, ROW)) as r:
            assert (r.status, r.headers["x-amzn-ErrorType"]) == (403, "InvalidSignatureException")
        big = b"\n".join([b" " * 12 + ROW] * 9_000)  # 288 KB: streamed to storage, not held
        forged = big.replace(b"120.5", b"999.9")
        headers = signed_headers(router, big, Prefer="respond-async")
        async with http.post(router.endpoint("fraud"), data=forged, headers=headers) as r:
            assert r.status == 403  # refused before the 202
        async with http.post(router.endpoint("fraud"), data=big, headers=headers) as r:
            assert r.status == 202
            job_id = (await r.json())["job_id"]
        async with asyncio.timeout(20):  # team-a's job: read with team-a's key
            while True:
                async with http.get(f"{router.url}/jobs/{job_id}", headers={"X-Api-Key": API_A}) as r:
                    status = (await r.json())["status"]
                if status not in ("queued", "running"):
                    break
                await asyncio.sleep(0.02)
        assert status == "succeeded"
        old = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=20)
        async with http.post(router.endpoint("fraud"), data=ROW, headers=signed_headers(router, ROW, when=old)) as r:
            assert r.status == 403
            assert "Signature expired" in (await r.json())["message"]
        assert rt.requests == 2  # the two honest requests only
        assert router.runtime.job_lane is not None
        assert sum((await router.runtime.job_lane.jobs.stats(0.0)).jobs.values()) == 1
        inputs = tmp_path / "objects" / "inputs"
        assert [p.name for p in inputs.iterdir()] == [job_id]  # the forged upload was deleted
