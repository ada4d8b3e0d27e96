"""The command line users expect: --version, --log-level, ROUTER_CONFIG, python -m router, and an ``explain`` that
takes sizes with units and a described backend state, and shows every policy's verdict and the client's answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from router.cli import main
from router.config_state import router_version
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "policies" / "demo.yaml")
LATENCY_FIRST = str(ROOT / "policies" / "latency-first.yaml")


def explain(capsys: pytest.CaptureFixture[str], *args: str, config: str = DEMO) -> dict[str, Any]:
    assert main(["explain", "--config", config, *args]) == 0, capsys.readouterr().err
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    return result


def test_version_is_the_installed_packages(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"inference-router {router_version()}\n"
    assert router_version() != "unknown"


def test_python_dash_m_router_is_the_same_command() -> None:
    done = subprocess.run([sys.executable, "-m", "router", "check", "--config", DEMO], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{DEMO}: ok (1 models, 3 backends, 4 policies)")


def test_router_config_stands_in_for_config(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setenv("ROUTER_CONFIG", DEMO)
    assert main(["check"]) == 0
    assert capsys.readouterr().out.startswith(f"{DEMO}: ok")
    other = tmp_path / "other.yaml"
    other.write_text("models: {}\n")
    assert main(["check", "--config", str(other)]) == 2  # --config wins
    monkeypatch.delenv("ROUTER_CONFIG")
    assert main(["check"]) == 2
    assert "give --config FILE or set ROUTER_CONFIG" in capsys.readouterr().err


def test_log_level_warning_keeps_the_info_lines_out(tmp_path: Path) -> None:
    """A real `serve` at --log-level warning: a request is served, and neither its access line nor the start-up
    line is logged; at the default level both are."""
    port = free_port()
    config = tmp_path / "router.yaml"
    config.write_text(f"server: {{listen: '127.0.0.1:{port}', drain_delay: 0s}}\nbackends:\n"
                      "  rt: {kind: http, url: 'http://127.0.0.1:9/invocations'}\n"
                      "models:\n  m: {lanes: {realtime: rt}}\n")
    env = {**os.environ, "ROUTER_CONFIG": str(config)}
    logs = []
    for level in (["--log-level", "warning"], []):
        proc = subprocess.Popen([sys.executable, "-m", "router", *level, "serve"], env=env, cwd=ROOT,
                                stderr=subprocess.PIPE, text=True)
        try:
            answer = _get_when_up(f"http://127.0.0.1:{port}/endpoints/nope/invocations")
            assert answer == 404
        finally:
            proc.terminate()
            logs.append(proc.communicate(timeout=30)[1])
    quiet, default = logs
    assert '"event":"request"' in default
    assert '"event":"router_started"' in default
    assert '"event":"request"' not in quiet
    assert '"event":"router_started"' not in quiet


def _get_when_up(url: str) -> int:
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=b"x", method="POST"), timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_explain_takes_sizes_with_units_and_says_a_body_too_large_gets_413(capsys: pytest.CaptureFixture[str]) -> None:
    result = explain(capsys, "--model", "fraud", "--bytes", "7MB")
    assert result["request"]["payload_bytes"] == 7_000_000
    assert result["answer"]["status"] == 413  # over the sync lanes, and no Prefer: respond-async for a job
    assert result["policies"][-2] == {"policy": "by-size-and-saturation", "verdict": "skipped",
                                      "why": "async_not_accepted",
                                      "decision": {"lane": "async", "fallback": [], "reason": "too_big_for_sync"}}
    job = explain(capsys, "--model", "fraud", "--bytes", "7MB", "--header", "Prefer: respond-async")
    assert (job["lane"], job["answer"]["status"]) == ("async", 202)
    assert main(["explain", "--config", DEMO, "--model", "fraud", "--bytes", "7XB"]) == 2
    assert "invalid size '7XB'" in capsys.readouterr().err


def test_explain_shows_every_policys_verdict_in_chain_order(capsys: pytest.CaptureFixture[str]) -> None:
    result = explain(capsys, "--model", "fraud", "--bytes", "100")
    assert result["policies"] == [
        {"policy": "shed-low", "verdict": "abstained"},
        {"policy": "deadline", "verdict": "abstained"},
        {"policy": "by-size-and-saturation", "verdict": "decided", "why": "realtime_first",
         "decision": {"lane": "realtime", "fallback": ["serverless", "async"], "reason": "realtime_first"}},
    ]
    assert result["answer"]["status"] == 200


def test_explain_with_both_sync_backends_saturated_sheds_low_urgency_with_429(capsys: pytest.CaptureFixture[str]
                                                                             ) -> None:
    result = explain(capsys, "--model", "fraud", "--header", "X-Urgency: low", "--saturation", "realtime=1.0",
                     "--saturation", "fraud-sls=1")
    assert result["policies"] == [
        {"policy": "shed-low", "verdict": "decided", "why": "shed_saturated",
         "decision": {"lane": "shed", "fallback": [], "reason": "shed_saturated"}},
        {"policy": "deadline", "verdict": "not consulted"},
        {"policy": "by-size-and-saturation", "verdict": "not consulted"},
    ]
    assert result["answer"]["status"] == 429
    deferred = explain(capsys, "--model", "fraud", "--header", "X-Urgency: low", "--header", "Prefer: respond-async",
                       "--saturation", "realtime=1.0", "--saturation", "serverless=1.0")
    assert (deferred["reason"], deferred["answer"]["status"]) == ("deferred_shed_saturated", 202)


def test_explain_with_a_cold_serverless_lane_keeps_a_short_deadline_on_realtime(capsys: pytest.CaptureFixture[str]
                                                                                ) -> None:
    warm = explain(capsys, "--model", "fraud", "--header", "X-Deadline-Ms: 500", "--latency", "serverless=20ms",
                   "--warm", "serverless", "--saturation", "realtime=1.0", "--latency", "realtime=10ms")
    assert (warm["lane"], warm["policy"]) == ("serverless", "by-size-and-saturation")
    cold = explain(capsys, "--model", "fraud", "--header", "X-Deadline-Ms: 500", "--cold", "serverless",
                   "--saturation", "realtime=1.0", "--latency", "realtime=10ms")
    assert (cold["lane"], cold["policy"], cold["reason"]) == ("realtime", "deadline", "deadline")
    assert cold["policies"][1]["verdict"] == "decided"
    assert cold["answer"]["status"] == 200  # after a wait in real-time's queue


def test_explain_with_an_open_breaker_and_a_queue(capsys: pytest.CaptureFixture[str]) -> None:
    result = explain(capsys, "--model", "fraud", "--breaker", "realtime=open", "--queue", "serverless=5",
                     "--latency", "serverless=100ms")
    assert result["lane"] == "serverless"  # realtime_full: an open breaker reads as saturation 1
    (hop,) = [q for q in result["queue"] if q["lane"] == "serverless"]
    assert (hop["queue_depth"], hop["room_now"]) == (5, False)
    assert main(["explain", "--config", DEMO, "--model", "fraud", "--breaker", "nowhere=open"]) == 2
    assert "'nowhere' is neither a lane nor a backend of this model" in capsys.readouterr().err
    assert main(["explain", "--config", DEMO, "--model", "fraud", "--breaker", "realtime=ajar"]) == 2
    assert "realtime: breaker: Input should be 'closed', 'open' or 'half_open'" in capsys.readouterr().err


def test_latency_first_sends_urgent_overflow_to_a_cold_serverless_lane(capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped latency-first policy: urgent overflow warms serverless instead of never using it."""
    result = explain(capsys, "--model", "my-model", "--header", "X-Urgency: high", "--saturation", "realtime=1.0",
                     "--cold", "serverless", config=LATENCY_FIRST)
    assert (result["lane"], result["reason"]) == ("serverless", "urgent_overflow")
    calm = explain(capsys, "--model", "my-model", "--header", "X-Urgency: high", "--cold", "serverless",
                   config=LATENCY_FIRST)
    assert calm["lane"] == "realtime"
