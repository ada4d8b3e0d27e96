"""The README's "Clients" example, run as written against a live router: boto3 with one attempt and a deadline
header gets the answer, and a shed reaches the router once (five times with boto3's defaults)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from router.demo.model_server import ModelServer
from tests.conftest import RunningRouter, serve_router

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
(EXAMPLE,) = re.findall(r"<!-- clients-example -->\n```python\n(.*?)```", README, re.S)


@pytest.fixture
async def router() -> AsyncIterator[RunningRouter]:
    async with ModelServer() as model, serve_router(f"""
backends:
  rt: {{kind: http, url: "{model.url}/invocations"}}
models:
  fraud:
    lanes: {{realtime: rt}}
    policy: [low-shed]
policies:
  low-shed: {{type: rules, params: [{{when: {{urgency: low}}, route: shed}}, {{route: realtime}}]}}
""") as r:
        yield r


def run_example(url: str) -> tuple[dict[str, Any], str]:
    """The README's code with ROUTER pointing at ``url``: its namespace and what it printed."""
    namespace: dict[str, Any] = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(EXAMPLE.replace('"http://127.0.0.1:8080"', repr(url)), namespace)
    return namespace, printed.getvalue()


def sheds(router: RunningRouter) -> float:
    return router.runtime.metrics.registry.get_sample_value("router_shed_total", {"model": "fraud",
                                                                                  "reason": "rule_0"}) or 0.0


def low_urgency(request: Any, **_: Any) -> None:
    request.headers["X-Urgency"] = "low"


async def test_the_readme_client_gets_the_answer_with_its_deadline_sent(router: RunningRouter) -> None:
    namespace, printed = await asyncio.to_thread(run_example, router.url)
    assert printed == "b'0.998352\\n'\n"
    (last,) = [d for d in router.runtime.recent if d[1]]  # the request it made, from the status page's ring
    assert last[2:4] == ("fraud", "realtime")
    smr = namespace["smr"]
    assert smr.meta.config.read_timeout == 2.5
    assert smr.meta.config.retries == {"mode": "standard", "total_max_attempts": 1}


async def test_a_shed_reaches_the_router_once_with_the_readme_client_and_five_times_with_boto3s_defaults(
        router: RunningRouter) -> None:
    namespace, _ = await asyncio.to_thread(run_example, router.url)
    readme_client = namespace["smr"]
    default_client = boto3.client("sagemaker-runtime", endpoint_url=router.url, region_name="us-east-1",
                                  aws_access_key_id="x", aws_secret_access_key="x")
    calls = []
    for client in (readme_client, default_client):
        client.meta.events.register("before-sign.sagemaker-runtime.InvokeEndpoint", low_urgency)
        before = sheds(router)

        def call(smr: Any = client) -> str:
            try:
                smr.invoke_endpoint(EndpointName="fraud", ContentType="text/csv", Body=b"1,2,3,4,5,6")
            except smr.exceptions.ClientError as exc:
                return str(exc.response["Error"]["Code"])
            return "answered"

        assert await asyncio.to_thread(call) == "ThrottlingException"
        calls.append(sheds(router) - before)
    assert calls == [1.0, 5.0]
