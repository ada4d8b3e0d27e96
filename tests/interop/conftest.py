"""Real third-party model servers for the interop tests, started once per session from a venv of their own
(``.venv-interop``, made by ``make interop``: MLServer 1.7 needs ``uvloop<0.22``, the router's uvicorn pulls a
newer one). Each listens on 127.0.0.1 only; both start at once, so their start-up times overlap."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYTHON = Path(os.environ.get("ROUTER_INTEROP_PYTHON", ROOT / ".venv-interop" / "bin" / "python"))
START_TIMEOUT_S = 60.0


@dataclass
class ServerProcess:
    """A third-party server in a process group of its own (MLServer and LitServe start workers)."""

    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def wait_ready(self, path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        pytest.fail(f"{self.name} not ready after {START_TIMEOUT_S:g}s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _spawn(name: str, args: list[str], cwd: Path, logs: Path, port: int) -> ServerProcess:
    log = logs / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHONPATH"))}
    env["PYTHONUNBUFFERED"] = "1"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return ServerProcess(name, f"http://127.0.0.1:{port}", proc, log)


@pytest.fixture(scope="session")
def interop_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    if not PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{PYTHON} is missing: `make test` creates it with `make interop`")
        pytest.skip(f"{PYTHON} is missing: run `make interop` (make test does)")
    logs = tmp_path_factory.mktemp("interop")
    servers: dict[str, ServerProcess] = {}
    try:
        port = free_port()
        servers["litserve"] = _spawn("litserve", [str(PYTHON), str(HERE / "litserve_app.py"), str(port)], logs,
                                     logs, port)
        repo = logs / "mlserver"
        port = free_port()
        subprocess.run([str(PYTHON), str(HERE / "train_lr.py"), str(repo), str(port), str(free_port()),
                        str(free_port())], check=True, timeout=120)
        servers["mlserver"] = _spawn("mlserver", [str(PYTHON.parent / "mlserver"), "start", str(repo)], repo,
                                     logs, port)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def mlserver(interop_servers: dict[str, ServerProcess]) -> ServerProcess:
    """MLServer 1.7 with mlserver-sklearn serving ``lr``, a logistic regression trained at start (4 features)."""
    server = interop_servers["mlserver"]
    server.wait_ready("/v2/models/lr/ready")
    return server


@pytest.fixture(scope="session")
def litserve(interop_servers: dict[str, ServerProcess]) -> ServerProcess:
    """LitServe 0.2 with its OpenAI spec and a model that streams words (see litserve_app.py)."""
    server = interop_servers["litserve"]
    server.wait_ready("/health")
    return server

