"""No input is a 500: the HTTP surface of a real ``inference-router serve`` fuzzed with raw requests
(hypothesis) and from its own OpenAPI document (schemathesis), and the requests that found 500s kept.

A bounded run here; ``FUZZ_EXAMPLES=20000`` for a longer one by hand (``-s`` prints the counts)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz_target import ADMIN_TOKEN, API_KEY, AWS_KEY_ID, FuzzTarget, running

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or None
STATUSES: Counter[int] = Counter()


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    with running(tmp_path_factory.mktemp("fuzz")) as running_target:
        yield running_target
    if EXAMPLES:
        print(f"\nHTTP fuzz: {sum(STATUSES.values())} requests, statuses {dict(sorted(STATUSES.items()))}")


def exchange(target: FuzzTarget, raw: bytes) -> tuple[int, bytes]:
    """Send one raw request and read the answer to the end (the server closes: Connection: close).
    Status 0: the connection closed without an answer."""
    with socket.create_connection((target.host, target.port), timeout=15) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # no TIME_WAIT here
        with contextlib.suppress(OSError):  # refused mid-way (431, 408): the answer is what counts
            sock.sendall(raw)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    data = b"".join(chunks)
    while data.startswith(b"HTTP/1.1 100"):  # Expect: 100-continue
        data = data.split(b"\r\n\r\n", 1)[1]
    try:
        status = int(data.split(b" ", 2)[1]) if data else 0
    except (IndexError, ValueError):
        status = -1
    STATUSES[status] += 1
    return status, data


def request(method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: router", *(f"{k}: {v}" for k, v in headers)]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    head = "\r\n".join(lines) + "\r\n\r\n"
    try:
        return head.encode("latin-1") + body  # what a server decodes back to the same text
    except UnicodeEncodeError:
        return head.encode("utf-8") + body


# --- the requests that were 500s: kept as regression tests --------------------------------------------------

ROW = b"120.5,2,0.8,350,7,30"
CORPUS = [
    ("X-Deadline-Ms: superscript two", "/endpoints/fraud/invocations", [("X-Deadline-Ms", "²")], ROW, 400),
    ("X-Deadline-Ms: Arabic-Indic digits", "/endpoints/fraud/invocations", [("X-Deadline-Ms", "١٢٣")], ROW, 400),
    ("X-Deadline-Ms: 5,000 digits", "/endpoints/fraud/invocations", [("X-Deadline-Ms", "9" * 5000)], ROW, 400),
    ("Prefer: wait=superscript one", "/endpoints/fraud/invocations",
     [("Prefer", "respond-async, wait=¹"), ("Content-Type", "text/csv")], ROW, 200),
    ("explain with X-Deadline-Ms: superscript two", "/admin/explain", [("Authorization", f"Bearer {ADMIN_TOKEN}")],
     json.dumps({"model": "fraud", "headers": {"X-Deadline-Ms": "²"}}).encode(), 400),
    ("a SigV4 header of a known key, malformed", "/endpoints/fraud/invocations",
     [("Authorization", f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/2020/x")], ROW, 400),
    ("a SigV4 header with a non-hex signature", "/jobs/abc",
     [("Authorization", f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/20200101/us-east-1/sagemaker/aws4_request, "
                        "SignedHeaders=host;x-amz-date, Signature=zz")], b"", 403),
]


@pytest.mark.parametrize(("what", "path", "headers", "body", "status"), CORPUS, ids=[c[0] for c in CORPUS])
def test_a_request_that_was_a_500_is_answered_as_the_clients_error(
        target: FuzzTarget, what: str, path: str, headers: list[tuple[str, str]], body: bytes, status: int) -> None:
    method = "GET" if path.startswith("/jobs/") else "POST"
    got, data = exchange(target, request(method, path, headers, body))
    assert got == status, data[:500]
    assert target.tracebacks() == []


# --- raw requests -------------------------------------------------------------------------------------------

NUMBERS = ["0", "1", "-1", "²", "¹", "١٢", "1_000", "1e3", " 7 ", "0x10", "9" * 25, "9" * 5000, "NaN", ""]
NAMES = ["X-Urgency", "X-Deadline-Ms", "Prefer", "X-Api-Key", "Authorization", "Content-Type", "Accept",
         "X-Request-Id", "traceparent", "tracestate", "X-Amzn-SageMaker-Custom-Attributes",
         "X-Amzn-SageMaker-Target-Variant", "X-Amzn-SageMaker-Inference-Id", "X-Amzn-SageMaker-InputLocation",
         "X-Amzn-SageMaker-Content-Type", "X-Callback-Url", "Accept-Encoding", "Content-Encoding", "Expect",
         "X-Amz-Date", "X-Amz-Content-SHA256"]
VALUES = [*NUMBERS, "critical", "low", "CRITICAL", "respond-async", "respond-async, wait=5", "wait=¹",
          "respond-async; wait=\"3\"", API_KEY, "Bearer x", f"Bearer {ADMIN_TOKEN}", "text/csv",
          "application/json", "application/jsonlines", "text/csv; charset=utf-8", "gzip", "100-continue",
          "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "s3://bucket/key",
          "https://hooks.example.com/x", "http://169.254.169.254/", "20200101T000000Z",
          f"AWS4-HMAC-SHA256 Credential={AWS_KEY_ID}/20200101/us-east-1/sagemaker/aws4_request, "
          "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64,
          "AWS4-HMAC-SHA256 Credential=AKIAUNKNOWN000000000/20200101/us-east-1/sagemaker/aws4_request, "
          "SignedHeaders=host, Signature=" + "a" * 64]
TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)
PATHS = st.one_of(
    st.sampled_from(["/endpoints/fraud/invocations", "/endpoints/fraud/async-invocations", "/v2/models/fraud/infer",
                     "/legacy/fraud/a/b", "/legacy/fraud/../x", "/endpoints/nope/invocations",
                     "/endpoints//invocations", "/jobs/x", "/jobs/x/result", "/jobs/x/error", "/healthz", "/readyz",
                     "/metrics", "/openapi.json", "/admin/policy", "/admin/explain", "/admin/reload", "/",
                     "/endpoints/fraud%2F../invocations"]),
    st.builds(lambda seg, tail: f"/endpoints/{seg}/{tail}",
              st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#"), max_size=30),
              st.sampled_from(["invocations", "async-invocations", "x", ""])),
    st.builds(lambda seg: f"/jobs/{seg}", st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                                                  exclude_characters="/?#"), max_size=200)),
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["POST"] * 6 + ["GET"] * 3 + ["PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]))
    path = draw(PATHS)
    if draw(st.booleans()):
        path += "?" + draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#"),
                                   max_size=20))
    headers = draw(st.lists(st.tuples(st.sampled_from(NAMES) | st.from_regex(r"\AX-[A-Za-z0-9-]{1,20}\Z"),
                                      st.sampled_from(VALUES) | TEXT), max_size=8))
    if path.startswith("/admin/explain") and draw(st.booleans()):
        explain = {"model": draw(st.sampled_from(["fraud", "nope", ""])),
                   "headers": dict(draw(st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(VALUES) | TEXT),
                                                 max_size=4))),
                   "bytes": draw(st.integers(-5, 10**20))}
        body = json.dumps(explain).encode()
    else:
        body = draw(st.sampled_from([b"", ROW, ROW * 3, b'{"instances": [[1,2,3,4,5,6]]}', b"\n".join([ROW] * 40)])
                    | st.binary(max_size=300))
    return request(method, path, headers, body)


FUZZ = settings(max_examples=EXAMPLES or 200, deadline=None, derandomize=EXAMPLES is None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@FUZZ
@given(raw=raw_requests())
def test_fuzz_raw_requests_get_no_500(target: FuzzTarget, raw: bytes) -> None:
    status, data = exchange(target, raw)
    assert status != 500, data[:500]
    assert status != -1, data[:500]  # an answer that is not HTTP


def test_fuzz_raw_requests_left_no_traceback(target: FuzzTarget) -> None:
    assert target.tracebacks() == []


# --- schemathesis, from the router's own OpenAPI document ---------------------------------------------------


@pytest.fixture(scope="module")
def api(target: FuzzTarget) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{target.url}/openapi.json")


def not_a_500(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """A 503 (no capacity, a deadline no lane meets) or a 504 is an honest answer; a 500 is a router bug."""
    if response.status_code == 500:
        raise AssertionError(f"500 for {case.method} {case.formatted_path}: {response.text[:300]}")


CHECKS = [not_a_500, status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz_operation(target: FuzzTarget, operation: Any, mode: GenerationMode, examples: int) -> None:
    """Call ``operation`` with ``examples`` generated cases of ``mode``; each answer must be as documented."""
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if operation.path.startswith("/admin/") else {}

    @settings(max_examples=examples, deadline=None, derandomize=EXAMPLES is None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def call(case: schemathesis.Case) -> None:
        response = case.call(base_url=target.url, headers={**admin, "Connection": "close"}, timeout=15)
        STATUSES[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    try:
        call()
    except Unsatisfiable:  # nothing of the operation can be invalid (no parameters, no body)
        assert mode is GenerationMode.NEGATIVE


def test_fuzz_the_openapi_document_no_500_and_every_answer_as_documented(target: FuzzTarget,
                                                                         api: schemathesis.BaseSchema) -> None:
    """Every operation, with data that fits the document and data that does not."""
    operations = [result.ok() for result in api.get_all_operations()]
    assert {"POST /endpoints/{EndpointName}/invocations", "GET /jobs/{job_id}", "POST /admin/explain",
            "POST /v2/models/fraud/infer"} <= {op.label for op in operations}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz_operation(target, operation, mode, EXAMPLES // 100 if EXAMPLES else 8)
    assert target.tracebacks() == []
