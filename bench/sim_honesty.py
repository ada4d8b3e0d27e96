"""Does the simulator tell the truth? Drive the demo with a recorded load pattern, then simulate the demo's
config on the demo's own access log, and compare.

    .venv/bin/python bench/sim_honesty.py [--duration 60] [--rps 60] [--pattern spiky] [--seed 1]

1. ``inference-router demo --port P`` runs as a subprocess (its model servers on free ports, its state in a
   temporary folder); its stderr is its JSON access log.
2. A load pattern (``router.sim.synthetic``, seeded: bursts, urgencies, deadlines, ``Prefer: respond-async``,
   a tenant with an API key) is sent open-loop at its arrival times.
3. The demo stops; its access log is the trace. ``simulate`` runs ``policies/demo.yaml`` on it (service times
   learned from the trace, as a user's run would).
4. Recorded vs simulated: the lane split (goal: within 5 percentage points per lane), the p50 of each sync lane
   (within 30%), shed + deferred requests (within 10%, or 5 requests when there are few).

Writes ``bench/results/sim_honesty.json``. The same check, shorter, runs in tests/test_sim_honesty.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.config import load_config  # noqa: E402
from router.sim.fit import fit_service_times  # noqa: E402
from router.sim.run import Simulation  # noqa: E402
from router.sim.source import mix_for  # noqa: E402
from router.sim.synthetic import synthetic  # noqa: E402
from router.sim.trace import TraceRequest, read_trace  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ROW = b"120.5,2,0.8,350,7,30\n"
TEAM_KEY = "demo-team-a-key"
LANES = ("realtime", "serverless", "async", "batch", "shed", "failed")
GOALS = {"split_pp": 5.0, "p50_ratio": 0.30, "shed_deferred": 0.10}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def recorded_outcome(r: TraceRequest) -> str:
    """Where the demo served a request, from its access-log line."""
    if r.lane == "shed":
        return "shed"
    if r.lane in ("realtime", "serverless") and r.status == 200:
        return r.lane
    if r.lane in ("async", "batch") and r.status in (200, 202):
        return r.lane
    return "failed" if r.status is None or r.status >= 429 else "rejected"


async def _drive(base: str, pattern: list[TraceRequest]) -> Counter[int]:
    """Send ``pattern`` open-loop: each request at its time, whatever the answers before it."""
    codes: Counter[int] = Counter()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        async def one(r: TraceRequest) -> None:
            headers = {"Content-Type": "text/csv"}
            if r.urgency:
                headers["X-Urgency"] = r.urgency
            if r.caller == "team-a":
                headers["X-Api-Key"] = TEAM_KEY
            if r.deadline_ms is not None:
                headers["X-Deadline-Ms"] = str(r.deadline_ms)
            if r.accepts_async:
                headers["Prefer"] = "respond-async"
            body = ROW  # one record: the simulator counts a batch request as one record
            try:
                async with http.post(f"{base}/endpoints/fraud/invocations", data=body, headers=headers) as resp:
                    await resp.read()
                    codes[resp.status] += 1
            except aiohttp.ClientError:
                codes[0] += 1

        start = time.monotonic()
        tasks = []
        for r in pattern:
            delay = start + r.t - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(r)))
        await asyncio.gather(*tasks)
    return codes


def record(duration_s: float, rps: float, pattern: str, seed: int, workdir: Path) -> tuple[Path, Counter[int]]:
    """Run the demo under the load pattern; its access log (the trace) and the status codes seen."""
    port = _free_port()
    env = {**os.environ, "DEMO_RT_PORT": str(_free_port()), "DEMO_SLS_PORT": str(_free_port()),
           "DEMO_ASYNC_PORT": str(_free_port()), "DEMO_STATE": str(workdir / "state"), "PYTHONUNBUFFERED": "1"}
    log = workdir / "access.log"
    cfg = load_config(ROOT / "policies" / "demo.yaml", env)
    mix = mix_for(cfg)
    mix = type(mix)(models=mix.models, tenants=mix.tenants, urgencies=mix.urgencies, large_share=0.0,
                    medium_share=0.0, small_bytes=60, deadline_share=0.2, async_share=0.2, csv_share=1.0)
    requests = list(synthetic(pattern, rps, duration_s, mix, seed))
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "router.cli", "demo", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the demo did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.1)
        codes = asyncio.run(_drive(base, requests))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return log, codes


def compare(trace: Path, count_slack: float = 5.0) -> dict[str, Any]:
    """Recorded vs simulated on the demo config; each figure with its goal and whether it is met. Shed +
    deferred counts may also differ by ``count_slack`` requests (a few, where there are few)."""
    recorded = list(read_trace(trace))
    n = len(recorded)
    if n == 0:
        raise RuntimeError("the trace has no requests")
    rec_split = Counter(recorded_outcome(r) for r in recorded)
    rec_deferred = sum(1 for r in recorded if (r.reason or "").startswith("deferred_"))
    cfg = load_config(ROOT / "policies" / "demo.yaml")
    sim = Simulation(cfg, "demo.yaml", fit_service_times(recorded), seed=1)
    res = sim.run(iter(recorded))
    out: dict[str, Any] = {"requests": n, "lanes": {}, "p50_ms": {}, "shed_deferred": {}}
    ok = True
    for lane in LANES:
        a = rec_split[lane] / n * 100.0
        b = res.outcomes[lane] / n * 100.0
        met = abs(a - b) <= GOALS["split_pp"]
        ok &= met
        out["lanes"][lane] = {"recorded_pct": round(a, 2), "simulated_pct": round(b, 2), "met": met}
    for lane in ("realtime", "serverless"):
        durations = sorted(r.duration_s for r in recorded if recorded_outcome(r) == lane and r.duration_s)
        sim_p50 = res.latency[lane].percentile(50)
        if len(durations) < 50 or sim_p50 is None:  # a median of fewer swings with a handful of cold starts
            out["p50_ms"][lane] = {"recorded": None, "simulated": sim_p50, "met": None, "note": "too few requests"}
            continue
        rec_p50 = durations[len(durations) // 2]
        met = abs(sim_p50 - rec_p50) <= GOALS["p50_ratio"] * rec_p50
        ok &= met
        out["p50_ms"][lane] = {"recorded": round(rec_p50 * 1000, 2), "simulated": round(sim_p50 * 1000, 2),
                               "met": met}
    a = rec_split["shed"] + rec_deferred
    b = res.outcomes["shed"] + res.deferred
    met = abs(a - b) <= max(count_slack, GOALS["shed_deferred"] * a)
    ok &= met
    out["shed_deferred"] = {"recorded": a, "simulated": b, "recorded_shed": rec_split["shed"],
                            "recorded_deferred": rec_deferred, "simulated_shed": res.outcomes["shed"],
                            "simulated_deferred": res.deferred, "met": met}
    out["all_met"] = ok
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rps", type=float, default=60.0)
    parser.add_argument("--pattern", default="spiky")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", help="keep the access log here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trace, codes = record(args.duration, args.rps, args.pattern, args.seed, Path(tmp))
        result = compare(trace)
        if args.keep:
            Path(args.keep).write_bytes(trace.read_bytes())
    result.update({"pattern": args.pattern, "rps": args.rps, "duration_s": args.duration, "codes": dict(codes)})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sim_honesty.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["all_met"] else 1)


if __name__ == "__main__":
    main()
