"""W3C trace context: the router continues a valid trace (or starts one), hands backends its own span as
their parent, and logs the trace id on the request's lines."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from router.demo.model_server import ModelServer
from router.policy.rules import RulesPolicy
from router.tracecontext import parse_traceparent, start_span
from tests.conftest import serve_router
from tests.sm_emulator import SageMakerRuntimeEmulator

ROW = "120.5,2,0.8,350,7,30"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING = f"00-{TRACE}-00f067aa0ba902b7-01"


def http_config(url: str) -> str:
    return f"""
backends:
  rt: {{kind: http, url: "{url}/invocations"}}
models:
  fraud: {{lanes: {{realtime: rt}}}}
"""


def test_a_valid_traceparent_is_continued_with_a_new_span() -> None:
    span = start_span(INCOMING, "vendor=abc")
    assert (span.trace_id, span.flags, span.tracestate) == (TRACE, "01", "vendor=abc")
    assert span.span_id != "00f067aa0ba902b7"
    assert parse_traceparent(span.traceparent) == (TRACE, "01")
    assert span.headers() == {"traceparent": span.traceparent, "tracestate": "vendor=abc"}


def test_a_later_version_is_read_by_its_first_four_fields_and_sent_as_version_00() -> None:
    span = start_span(f"01-{TRACE}-00f067aa0ba902b7-00-future-field")
    assert (span.trace_id, span.flags) == (TRACE, "00")
    assert span.traceparent.startswith(f"00-{TRACE}-")


@pytest.mark.parametrize("bad", [
    None, "", "garbage",
    f"00-{TRACE.upper()}-00f067aa0ba902b7-01",          # uppercase hex
    f"00-{'0' * 32}-00f067aa0ba902b7-01",              # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",                       # all-zero parent id
    f"ff-{TRACE}-00f067aa0ba902b7-01",                 # version ff is invalid
    f"00-{TRACE}-00f067aa0ba902b7-01-extra",           # version 00 has exactly four fields
    f"00-{TRACE[:-1]}-00f067aa0ba902b7-01",            # short trace id
    f"00-{TRACE}-00f067aa0ba902b7-1",                  # short flags
])
def test_an_absent_or_invalid_traceparent_starts_a_new_trace_and_drops_tracestate(bad: str | None) -> None:
    assert parse_traceparent(bad) is None
    span = start_span(bad, "vendor=abc")
    assert span.trace_id != TRACE
    assert span.tracestate is None
    assert parse_traceparent(span.traceparent) == (span.trace_id, "01")
    assert span.headers() == {"traceparent": span.traceparent}


def log_lines(err: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


async def test_http_backend_gets_the_same_trace_with_the_routers_span_and_the_log_has_the_trace_id(
        http: aiohttp.ClientSession, capfd: pytest.CaptureFixture[str]) -> None:
    async with ModelServer() as rt, serve_router(http_config(rt.url)) as router:
        async with http.post(router.endpoint("fraud"), data=ROW, headers={
                "Content-Type": "text/csv", "traceparent": INCOMING, "tracestate": "vendor=abc",
                "X-Request-Id": "traced-1"}) as r:
            assert r.status == 200
        sent = rt.last_headers["traceparent"]
        assert rt.last_headers["tracestate"] == "vendor=abc"

        async with http.post(router.endpoint("fraud"), data=ROW, headers={
                "Content-Type": "text/csv", "traceparent": "00-nonsense", "X-Request-Id": "untraced-1"}) as r:
            assert r.status == 200
        fresh = rt.last_headers["traceparent"]
        assert "tracestate" not in rt.last_headers
    version, trace_id, parent, flags = sent.split("-")
    assert (version, trace_id, flags) == ("00", TRACE, "01")
    assert parent != "00f067aa0ba902b7"  # the router's own span is the backend's parent
    new_trace = parse_traceparent(fresh)
    assert new_trace is not None
    assert new_trace[0] != TRACE

    lines = {line["request_id"]: line for line in log_lines(capfd.readouterr().err) if line.get("event") == "request"}
    assert lines["traced-1"]["trace_id"] == TRACE
    assert lines["untraced-1"]["trace_id"] == new_trace[0]


async def test_every_line_logged_while_serving_a_request_carries_its_trace_id(
        http: aiohttp.ClientSession, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy that raises is logged from inside the engine, which knows nothing of the request."""
    def explode(*_: Any) -> None:
        raise RuntimeError("policy bug")

    monkeypatch.setattr(RulesPolicy, "decide", explode)
    config = http_config("http://127.0.0.1:9").replace("{realtime: rt}}", "{realtime: rt}, policy: [r]}")
    config += "policies:\n  r: {type: rules, params: [{route: realtime}]}\n"
    async with serve_router(config) as router, http.post(router.endpoint("fraud"), data=ROW,
                                                         headers={"traceparent": INCOMING}) as r:
        await r.read()
    events = {line["event"] for line in log_lines(capfd.readouterr().err) if line.get("trace_id") == TRACE}
    assert {"policy_raised", "request"} <= events


@pytest.mark.usefixtures("aws_env")
async def test_sagemaker_backend_sends_the_trace_headers_on_invoke_endpoint(http: aiohttp.ClientSession) -> None:
    async with ModelServer() as container, SageMakerRuntimeEmulator() as emulator:
        emulator.add_endpoint("fraud-rt", container.url)
        config = f"""
backends:
  rt: {{kind: sagemaker, endpoint: fraud-rt, endpoint_url: "{emulator.url}", region: us-east-1}}
models:
  fraud: {{lanes: {{realtime: rt}}}}
"""
        async with serve_router(config) as router:
            async with http.post(router.endpoint("fraud"), data=ROW, headers={
                    "Content-Type": "text/csv", "traceparent": INCOMING}) as r:
                assert r.status == 200
            async with http.post(router.endpoint("fraud"), data=ROW, headers={"Content-Type": "text/csv"}) as r:
                assert r.status == 200
    first, second = emulator.calls_to("fraud-rt")
    assert parse_traceparent(first.headers["traceparent"]) == (TRACE, "01")
    assert first.headers["traceparent"] != INCOMING
    other = parse_traceparent(second.headers["traceparent"])
    assert other is not None
    assert other[0] != TRACE  # no header in: a new trace, not the previous call's


async def test_an_async_jobs_backend_call_continues_the_accepting_requests_trace(
        tmp_path: Any, http: aiohttp.ClientSession, capfd: pytest.CaptureFixture[str]) -> None:
    async with ModelServer() as rt:
        config = http_config(rt.url).replace("{realtime: rt}}", "{realtime: rt, async: rt}, async_without_prefer: true,"
                                                                " default: {lane: async}}")
        config = f'state: {{kind: local, path: "{tmp_path}"}}\njobs: {{workers: 1, poll_interval: 20ms}}\n' + config
        async with serve_router(config) as router:
            async with http.post(router.endpoint("fraud"), data=ROW, headers={
                    "Content-Type": "text/csv", "traceparent": INCOMING}) as r:
                assert r.status == 202
                job_id = (await r.json())["job_id"]
            for _ in range(250):
                async with http.get(f"{router.url}/jobs/{job_id}") as r:
                    if (await r.json())["status"] == "succeeded":
                        break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the job did not finish")
        sent = rt.last_headers["traceparent"]
    version, trace_id, parent, _ = sent.split("-")
    assert (version, trace_id) == ("00", TRACE)
    assert parent != "00f067aa0ba902b7"  # a span of the router's, not the client's
    events = {line["event"] for line in log_lines(capfd.readouterr().err) if line.get("trace_id") == TRACE}
    assert {"request", "job_succeeded"} <= events  # the worker's lines carry the trace too
