"""A real ``inference-router serve`` and model server, each its own process, for fuzzing the HTTP surface.

The router's stderr goes to a file, so a fuzz run can check that no request made it log a traceback.
Its config has every surface a request can reach: API keys and SigV4 callers, urgencies, deadlines, the
realtime, async and batch lanes, extra paths, webhooks and the admin API.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "fuzz-admin-token-0123"
API_KEY = "fuzz-team-api-key"
AWS_KEY_ID = "AKIAFUZZ000000000001"
AWS_SECRET = "fuzz-aws-secret-access-key"


@dataclass
class FuzzTarget:
    url: str
    host: str
    port: int
    log: Path

    def tracebacks(self) -> list[str]:
        """Log lines of unhandled errors: a traceback, a request the router failed, uvicorn's ASGI errors."""
        text = self.log.read_text(errors="replace")
        return [line[:400] for line in text.splitlines()
                if "Traceback" in line or '"event":"request_failed"' in line or "Exception in ASGI" in line
                or "never retrieved" in line]


def config(port: int, model_url: str, state: Path) -> str:
    return f"""
server: {{listen: "127.0.0.1:{port}", admin_token: {ADMIN_TOKEN}, log_format: json, access_log: false,
          drain_delay: 0s, max_header_bytes: 16KiB, header_timeout: 5s, body_timeout: 5s}}
state: {{kind: local, path: "{state}"}}
jobs: {{workers: 2, poll_interval: 50ms, backoff: 10ms, max_backoff: 50ms, max_attempts: 2}}
callers:
  - {{api_key: {API_KEY}, tenant: team-a, max_urgency: critical}}
  - {{aws_access_key_id: {AWS_KEY_ID}, aws_secret_access_key: {AWS_SECRET}, tenant: team-b}}
backends:
  rt: {{kind: http, url: "{model_url}/invocations", max_concurrency: 16, timeout: 5s}}
models:
  fraud:
    lanes: {{realtime: rt, async: rt, batch: rt}}
    limits: {{realtime: 64KB, async: 1MB, batch: 1MB}}
    batch: {{max_records: 50, max_wait: 200ms}}
    policy: [shed-low, deadline, route]
    paths: ["/v2/models/fraud/infer", "/legacy/fraud/*"]
policies:
  shed-low: {{type: shed, params: {{below_urgency: low}}}}
  deadline: {{type: deadline}}
  route:
    type: rules
    params:
      - {{when: {{urgency: low, accepts_async: true}}, route: batch}}
      - {{when: {{payload_bytes: {{gt: 16KB}}, accepts_async: true}}, route: async}}
      - {{route: realtime, fallback: [async]}}
webhooks: {{allow: ["https://hooks.example.com/*"], secret: fuzz-webhook-secret-0123}}
"""


def _wait(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port}")


@contextlib.contextmanager
def running(tmp: Path) -> Iterator[FuzzTarget]:
    model_port, port = free_port(), free_port()
    model = subprocess.Popen([sys.executable, "-m", "router.demo.model_server", "--port", str(model_port)],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = tmp / "router.yaml"
    path.write_text(config(port, f"http://127.0.0.1:{model_port}", tmp / "state"))
    log = tmp / "router.log"
    with open(log, "wb") as out:
        router = subprocess.Popen([sys.executable, "-m", "router.cli", "serve", "--config", str(path)], cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=out)
    try:
        _wait(model_port, model, "the model server")
        _wait(port, router, "the router")
        yield FuzzTarget(f"http://127.0.0.1:{port}", "127.0.0.1", port, log)
    finally:
        for proc in (router, model):
            proc.terminate()
        for proc in (router, model):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
