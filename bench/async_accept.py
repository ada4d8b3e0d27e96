"""The async lane's acceptance path in the embedded mode: durable 202s per second and their latency at 16
concurrent clients (wrk), then the router's RSS growth while a 1 GiB body streams to storage.

    .venv/bin/python bench/async_accept.py [--rounds 3] [--duration 10] [--upload-mib 1024]

Targets (issue 3): >= 1,000 accepted jobs/s with p99 <= 20 ms at 16 clients; RSS growth <= 64 MB for 1 GB.
Workers are off (jobs.workers: 0) so only acceptance is measured: payload stored + job committed, then 202.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sqlite3
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import WRK_LUA as OVERHEAD_LUA
from overhead import csv_body, proc_rss_mb, router_cli, run_wrk, started
from upstream import free_port, require_tools

# overhead.py's script (POST + the JSON summary line), plus the header that makes each request a job
WRK_LUA = OVERHEAD_LUA.replace('wrk.headers["Content-Type"] = "text/csv"\n',
                               'wrk.headers["Content-Type"] = "text/csv"\nwrk.headers["Prefer"] = "respond-async"\n')
assert "respond-async" in WRK_LUA

CONFIG = """
server: {{listen: "127.0.0.1:{port}", access_log: false, max_body: 1100MiB}}
state: {{kind: local, path: "{state}"}}
jobs: {{workers: 0}}
backends:
  rt: {{kind: http, url: "http://127.0.0.1:9/invocations"}}
models:
  bench:
    lanes: {{realtime: rt, async: rt}}
    limits: {{async: 1100MiB}}
    default: {{lane: async}}
"""


async def upload(url: str, mib: int, pid: int) -> dict[str, float]:
    block = bytes(range(256)) * 4096
    digest = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(mib):
            digest.update(block)
            yield block

    before = proc_rss_mb(pid)["VmRSS"]
    peak = before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc_rss_mb(pid)["VmRSS"])
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with aiohttp.ClientSession() as http, http.post(url, data=body(), headers={
            "Prefer": "respond-async", "Content-Length": str(mib * 1024 * 1024)}) as r:
        status = r.status
    elapsed = loop.time() - t0
    done.set()
    await sampler
    if status != 202:
        raise RuntimeError(f"upload answered {status}")
    return {"mib": mib, "seconds": elapsed, "rss_before_mb": before, "rss_peak_mb": peak,
            "rss_growth_mb": peak - before}


def accept_rounds(wrk: str, script: Path, url: str, rounds: int, duration: float, pid: int,
                  label: str) -> list[dict[str, Any]]:
    """``rounds`` wrk runs of ``duration`` s at 16 connections, each printed as it ends."""
    results = []
    for i in range(rounds):
        res = run_wrk(wrk, script, url, 2, 16, duration, pid)
        results.append(res)
        print(f"{label} round {i + 1}: {res['rps']:,.0f}/s  p50 {res['p50_us'] / 1000:.2f} ms  "
              f"p99 {res['p99_us'] / 1000:.2f} ms  errors {res['errors']}")
    return results


def medians(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rate and latency medians over the rounds, errors and answers summed."""
    return {"per_s_median": statistics.median(r["rps"] for r in rounds),
            "p50_ms_median": statistics.median(r["p50_us"] for r in rounds) / 1000,
            "p99_ms_median": statistics.median(r["p99_us"] for r in rounds) / 1000,
            "errors": sum(r["errors"] for r in rounds),
            "requests_answered_by_wrk": sum(int(r["requests"]) for r in rounds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--upload-mib", type=int, default=1024)
    args = ap.parse_args(argv)
    tools = require_tools("wrk")
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        config = tmp / "router.yaml"
        config.write_text(CONFIG.format(port=port, state=tmp / "var"))
        script = tmp / "post.lua"
        script.write_text(WRK_LUA.format(body=csv_body(1024)))
        url = f"http://127.0.0.1:{port}/endpoints/bench/invocations"
        with started([router_cli(), "serve", "--config", str(config)], port, tmp / "router.log") as proc:
            rounds = accept_rounds(tools["wrk"], script, url, args.rounds, args.duration, proc.pid, "jobs")
            big = asyncio.run(upload(url, args.upload_mib, proc.pid)) if args.upload_mib else None
        with sqlite3.connect(tmp / "var" / "jobs.sqlite3") as db:
            stored = db.execute("select count(*) from jobs").fetchone()[0]
    summary = {**medians(rounds), "jobs_stored": stored - (1 if big else 0), "upload": big}
    print(json.dumps(summary, indent=2))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "async_accept.json").write_text(json.dumps({"rounds": rounds, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
