"""``inference-router simulate`` and ``recommend`` as a user runs them: configs side by side, the HTML report
opened in a browser, the recommended config passing ``check``."""

from __future__ import annotations

import base64
import json
import random
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from router.sim.trace import TraceRequest, write_trace

CONFIG = """\
urgency: {{levels: {{critical: 3, high: 2, normal: 1, low: 0}}, default: normal}}
backends:
  rt:
    kind: sagemaker
    endpoint: rt
    max_concurrency: {rt_slots}
    queue: {{max_wait: 200ms}}
    cost: {{instance_type: ml.c5.xlarge, instances: {instances}}}
    simulate: {{service_time: 40ms, service_p99: 80ms}}
  sls:
    kind: sagemaker
    endpoint: sls
    max_concurrency: 20
    serverless: {{idle_after: 10m, cold_start: 3s}}
    cost: {{memory_mb: 2048}}
    simulate: {{service_time: 50ms}}
models:
  m:
    lanes: {{realtime: rt, serverless: sls}}
    policy: [overflow]
policies:
  overflow:
    type: rules
    params:
      - {{when: {{saturation.realtime: {{gte: 1.0}}}}, route: serverless, fallback: [realtime]}}
      - {{route: realtime, fallback: [serverless]}}
"""


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture
def configs(tmp_path: Path) -> tuple[Path, Path]:
    small, big = tmp_path / "small.yaml", tmp_path / "big.yaml"
    small.write_text(CONFIG.format(rt_slots=2, instances=1))
    big.write_text(CONFIG.format(rt_slots=8, instances=4))
    return small, big


def test_simulate_puts_configs_side_by_side(configs: tuple[Path, Path]) -> None:
    small, big = configs
    done = _cli("simulate", "--config", str(small), "--config", str(big), "--synthetic", "spiky", "--rps", "40",
                "--duration", "60s", "--seed", "3", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    a, b = doc["results"]
    assert (a["config"], b["config"]) == ("small.yaml", "big.yaml")
    assert a["requests"] == b["requests"] > 1500  # the same synthetic trace for both
    # four times the real-time fleet: more stays on real-time, it costs four times as much per day
    assert b["split"]["realtime"] > a["split"]["realtime"]
    assert b["backends"]["rt"]["cost"] == pytest.approx(4 * a["backends"]["rt"]["cost"])
    assert a["cost"]["per_day"] < b["cost"]["per_day"]
    text = _cli("simulate", "--config", str(small), "--synthetic", "steady", "--rps", "5", "--duration", "10s")
    assert text.returncode == 0
    assert "cost per day" in text.stdout
    assert "sync p50 / p95 / p99" in text.stdout


def test_simulate_says_what_is_missing(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backends:\n  rt: {kind: http, url: 'http://h/'}\nmodels:\n  m: {lanes: {realtime: rt}}\n")
    done = _cli("simulate", "--config", str(cfg), "--synthetic", "steady", "--rps", "5", "--duration", "5s")
    assert done.returncode == 2
    assert "no service time for backend(s) rt" in done.stderr
    assert "simulate.service_time" in done.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends:\n  rt: {kind: http, url: 'http://h/', cost: {instance_type: ml.x9.huge}}\n"
                   "models:\n  m: {lanes: {realtime: rt}}\n")
    done = _cli("simulate", "--config", str(bad), "--synthetic", "steady", "--rps", "5", "--duration", "5s")
    assert done.returncode == 2
    assert f"{bad}:2:" in done.stderr


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[bytes] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        src = dict(attrs).get("src") or ""
        if tag == "img" and src.startswith("data:image/png;base64,"):
            self.images.append(base64.b64decode(src.split(",", 1)[1]))


def test_the_html_report_is_one_file_with_its_charts_and_opens_in_a_browser(configs: tuple[Path, Path],
                                                                             tmp_path: Path) -> None:
    small, big = configs
    report = tmp_path / "report.html"
    done = _cli("simulate", "--config", str(small), "--config", str(big), "--synthetic", "diurnal", "--rps", "20",
                "--duration", "120s", "--html", str(report))
    assert done.returncode == 0, done.stderr
    page = report.read_text()
    parser = _Images()
    parser.feed(page)
    assert len(parser.images) == 4  # latency CDF, lane split, cost, queue depth
    assert all(img.startswith(b"\x89PNG") and len(img) > 5000 for img in parser.images)
    assert "small.yaml" in page
    assert "big.yaml" in page
    assert "http://" not in page.replace("http://h/", "")  # self-contained: nothing to fetch
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed: the report was parsed, not opened (apt-get install chromium)")
    shot = tmp_path / "shot.png"
    opened = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                             f"--screenshot={shot}", "--window-size=1000,3000", report.as_uri()],
                            capture_output=True, timeout=60, check=False, cwd=tmp_path)
    assert opened.returncode == 0, opened.stderr
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert shot.stat().st_size > 50_000  # charts drawn, not a blank page


def _recorded_trace(path: Path) -> None:
    """A trace as the access log records it: arrivals, and how the router served each request."""
    rng = random.Random(5)
    t, reqs = 0.0, []
    for _ in range(1500):
        t += rng.expovariate(25.0)
        duration = rng.lognormvariate(-3.2, 0.3)  # about 40 ms
        reqs.append(TraceRequest(t, "m", payload_bytes=800, content_type="text/csv", urgency="normal",
                                 lane="realtime", backend="rt", status=200, duration_s=duration))
    with path.open("wb") as fh:
        write_trace(reqs, fh)


def test_recommend_writes_the_cheapest_config_that_meets_the_slo_and_check_passes_it(configs: tuple[Path, Path],
                                                                                     tmp_path: Path) -> None:
    _small, big = configs
    trace, out = tmp_path / "trace.jsonl", tmp_path / "recommended.yaml"
    _recorded_trace(trace)
    done = _cli("recommend", "--config", str(big), "--trace", str(trace), "--slo", "p99<=150ms",
                "--deadline-misses", "1%", "--max-rejected", "1%", "--out", str(out), "--json", timeout=300)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    candidates = [c for c in doc["candidates"] if c["result"]]
    assert len(candidates) >= 20
    best = next(c for c in candidates if c["name"] == doc["recommended"])
    assert best["meets"]
    cheapest = min(c["result"]["cost"]["per_day"] for c in candidates if c["meets"])
    assert best["result"]["cost"]["per_day"] == cheapest
    assert best["result"]["cost"]["per_day"] < next(c for c in candidates if c["name"] == "own policy, all lanes")[
        "result"]["cost"]["per_day"]  # four instances were more than this traffic needs
    assert any(c["on_front"] for c in candidates)
    check = _cli("check", "--config", str(out))
    assert check.returncode == 0, check.stderr
    assert out.read_text().startswith("# Recommended by `inference-router recommend`")
