"""How fast ``simulate`` and ``recommend`` are, and whether memory stays flat in the trace's length.

    .venv/bin/python bench/simulate.py [--requests 1000000] [--recommend-requests 100000]

1. Writes a synthetic trace (spiky, the bench config's mix) of ``--requests`` requests as an access log, and
   a prefix of it of a fifth of the length.
2. Simulates each (``inference-router simulate --json``, a fresh process each) and reads the process's CPU
   time, wall time and peak RSS: requests per second, and the RSS of the long run against the short one
   (flat memory: about the same).
3. ``inference-router recommend`` on a ``--recommend-requests`` trace (a recorded-like trace: durations
   included) with 2 worker processes: candidates and wall time.

Goals (issue 11): >= 1,000,000 requests in <= 60 s (moonshot: >= 50,000 simulated requests/s), flat memory;
recommend over >= 20 candidates on 100,000 requests in <= 2 minutes. Writes ``bench/results/simulate.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.config import parse_config  # noqa: E402
from router.sim.source import mix_for  # noqa: E402
from router.sim.synthetic import synthetic  # noqa: E402
from router.sim.trace import TraceRequest, write_trace  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CONFIG = """\
urgency: {levels: {critical: 3, high: 2, normal: 1, low: 0}, default: normal, anonymous_max: high}
callers:
  - {api_key: "team-a-key-123", tenant: team-a, max_urgency: critical}
backends:
  model-rt:
    kind: http
    url: "http://model-rt/invocations"
    max_concurrency: 16
    cost: {instance_type: ml.c5.xlarge, instances: 2}
    simulate: {service_time: 20ms, service_p99: 60ms}
  model-sls:
    kind: http
    url: "http://model-sls/invocations"
    max_concurrency: 20
    serverless: {idle_after: 10m, cold_start: 5s}
    cost: {memory_mb: 2048}
    simulate: {service_time: 25ms}
models:
  my-model:
    lanes: {realtime: model-rt, serverless: model-sls, async: model-rt, batch: model-rt}
    policy: [shed-low, deadline, overflow]
policies:
  shed-low: {type: shed, params: {below_urgency: normal}}
  deadline: {type: deadline}
  overflow:
    type: rules
    params:
      - {when: {payload_bytes: {gt: 6MB}}, route: async, reason: too_big}
      - {when: {accepts_async: true, urgency: low}, route: batch, reason: low_batch}
      - {when: {payload_bytes: {gt: 4MB}}, route: realtime, reason: too_big_for_serverless}
      - {when: {saturation.realtime: {gte: 0.9}}, route: serverless, fallback: [realtime, async], reason: busy}
      - {route: realtime, fallback: [serverless, async], reason: realtime_first}
"""
RPS = 1000.0


def _measure(args: list[str]) -> dict[str, Any]:
    """Run a command in a fresh process; its wall time, CPU time and peak RSS."""
    before = os.times()
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = os.times()
    if done.returncode not in (0, 1):
        raise RuntimeError(done.stderr[-2000:])
    import resource

    return {"wall_s": round(wall, 2), "cpu_s": round((after.children_user - before.children_user)
                                                     + (after.children_system - before.children_system), 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "stdout": done.stdout}


def _trace(path: Path, n: int, recorded: bool = False) -> int:
    cfg = parse_config(CONFIG)
    # random arrivals over n / RPS seconds give about n: generate a little longer and keep exactly n
    reqs: Iterable[TraceRequest] = itertools.islice(synthetic("spiky", RPS, 1.05 * n / RPS, mix_for(cfg), seed=7), n)
    if recorded:  # as an access log records them: each answered on real-time in about 20 ms
        reqs = (r._replace(lane="realtime", backend="model-rt", status=200, duration_s=0.02) for r in reqs)
    with path.open("wb") as fh:
        return write_trace(reqs, fh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--recommend-requests", type=int, default=100_000)
    args = parser.parse_args()
    out: dict[str, Any] = {}
    cli = [sys.executable, "-m", "router.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cfg = d / "bench.yaml"
        cfg.write_text(CONFIG)
        runs = {}
        for name, n in (("short", args.requests // 5), ("long", args.requests)):
            trace = d / f"{name}.jsonl"
            written = _trace(trace, n)
            # a fresh process per run: RUSAGE_CHILDREN's peak is the largest child so far, so the short run goes first
            m = _measure([*cli, "simulate", "--config", str(cfg), "--trace", str(trace), "--json"])
            result = json.loads(m.pop("stdout"))["results"][0]
            m.update({"requests": result["requests"], "written": written,
                      "requests_per_cpu_s": round(result["requests"] / max(m["cpu_s"], 1e-9)),
                      "requests_per_wall_s": round(result["requests"] / max(m["wall_s"], 1e-9))})
            runs[name] = m
            print(f"simulate {name}: {m}", flush=True)
        out["simulate"] = runs
        out["memory_growth"] = round(runs["long"]["peak_rss_mb"] / runs["short"]["peak_rss_mb"], 3)
        trace = d / "recommend.jsonl"
        _trace(trace, args.recommend_requests, recorded=True)
        m = _measure([*cli, "recommend", "--config", str(cfg), "--trace", str(trace), "--slo", "p99<=250ms",
                      "--deadline-misses", "5%", "--max-rejected", "5%", "--out", str(d / "rec.yaml"), "--json"])
        doc = json.loads(m.pop("stdout"))
        m.update({"candidates": len(doc["candidates"]), "recommended": doc["recommended"]})
        out["recommend"] = m
        print(f"recommend: {m}", flush=True)
    out["load_average"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "simulate.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
