"""The batch lane in the embedded mode: durable appends per second, then records per second end to end.

    .venv/bin/python bench/batch.py [--rounds 3] [--duration 10] [--requests 400]

1. Appends: wrk, 16 connections, 1-record CSV requests with X-Urgency: low + Prefer: respond-async; the
   buffer never flushes (huge max_records, 1 h max_wait), so only "parse, append with a durable commit,
   202" is measured. Target (issue 4): >= 2,000 requests/s.
2. End to end: 16 concurrent clients send ``--requests`` requests of 100 records each to a router whose
   batch lane runs against the demo model server (its own process); the clock stops when the last job
   has succeeded. Target: >= 20,000 records/s. Every result is checked: 100 scores per job.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from async_accept import accept_rounds, medians
from overhead import WRK_LUA as OVERHEAD_LUA
from overhead import router_cli, started
from upstream import free_port, require_tools

WRK_LUA = OVERHEAD_LUA.replace(
    'wrk.headers["Content-Type"] = "text/csv"\n',
    'wrk.headers["Content-Type"] = "text/csv"\nwrk.headers["Prefer"] = "respond-async"\n'
    'wrk.headers["X-Urgency"] = "low"\n')
assert "respond-async" in WRK_LUA

CONFIG = """
server: {{listen: "127.0.0.1:{port}", access_log: false}}
state: {{kind: local, path: "{state}"}}
jobs: {{workers: 0}}
backends:
  rt: {{kind: http, url: "http://127.0.0.1:{model_port}/invocations", max_concurrency: 8, timeout: 30s}}
models:
  bench:
    lanes: {{realtime: rt, batch: rt}}
    batch: {{max_records: {max_records}, max_bytes: 100MB, max_wait: {max_wait}, max_payload: 1MB,
             max_concurrent: 2}}
    default: {{lane: batch}}
"""
ROW = "120.5,2,0.8,350,7,30"


def appends(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    tools = require_tools("wrk")
    port = free_port()
    config = tmp / "append.yaml"
    config.write_text(CONFIG.format(port=port, state=tmp / "append", model_port=9, max_records=1_000_000,
                                    max_wait="1h"))
    script = tmp / "post.lua"
    script.write_text(WRK_LUA.format(body=ROW))
    url = f"http://127.0.0.1:{port}/endpoints/bench/invocations"
    with started([router_cli(), "serve", "--config", str(config)], port, tmp / "append.log") as proc:
        rounds = accept_rounds(tools["wrk"], script, url, args.rounds, args.duration, proc.pid, "appends")
    with sqlite3.connect(tmp / "append" / "batch.sqlite3") as db:
        stored = db.execute("SELECT count(*) FROM batch_jobs WHERE status = 'queued'").fetchone()[0]
    return {**medians(rounds), "stored": stored}


async def end_to_end(base: str, requests: int, records: int = 100) -> dict[str, Any]:
    body = "\n".join([ROW] * records)
    headers = {"Content-Type": "text/csv", "X-Urgency": "low", "Prefer": "respond-async"}
    sem = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as http:
        async def submit() -> str:
            async with sem, http.post(f"{base}/endpoints/bench/invocations", data=body, headers=headers) as r:
                if r.status != 202:
                    raise RuntimeError(f"submit answered {r.status}: {await r.text()}")
                return str((await r.json())["job_id"])

        async def result(job_id: str) -> int:
            async with sem:
                for _ in range(6000):
                    async with http.get(f"{base}/jobs/{job_id}/result") as r:
                        if r.status == 200:
                            return len((await r.text()).splitlines())
                        if r.status != 202:
                            raise RuntimeError(f"job {job_id} ended {r.status}")
                    await asyncio.sleep(0.05)
            raise RuntimeError(f"job {job_id} did not finish")

        t0 = time.perf_counter()
        ids = await asyncio.gather(*(submit() for _ in range(requests)))
        submitted = time.perf_counter() - t0
        lines = await asyncio.gather(*(result(i) for i in ids))
        elapsed = time.perf_counter() - t0
    if lines != [records] * requests:
        raise RuntimeError("a job's result does not have one line per record")
    return {"requests": requests, "records": requests * records, "seconds": elapsed,
            "submit_seconds": submitted, "records_per_s": requests * records / elapsed}


def throughput(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    port, model_port = free_port(), free_port()
    config = tmp / "e2e.yaml"
    config.write_text(CONFIG.format(port=port, state=tmp / "e2e", model_port=model_port, max_records=1000,
                                    max_wait="100ms"))
    runs = []
    model = [sys.executable, "-m", "router.demo.model_server", "--port", str(model_port)]
    with started(model, model_port, tmp / "model.log"), \
            started([router_cli(), "serve", "--config", str(config)], port, tmp / "e2e.log"):
        for i in range(args.rounds):
            res = asyncio.run(end_to_end(f"http://127.0.0.1:{port}", args.requests))
            runs.append(res)
            print(f"end-to-end round {i + 1}: {res['records_per_s']:,.0f} records/s "
                  f"({res['records']:,} records in {res['seconds']:.2f} s, submitted in {res['submit_seconds']:.2f} s)")
    return {"records_per_s_median": statistics.median(r["records_per_s"] for r in runs), "rounds": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="router-bench-") as tmp_name:
        tmp = Path(tmp_name)
        summary = {"appends": appends(args, tmp), "end_to_end": throughput(args, tmp)}
    print(json.dumps(summary, indent=2))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "batch.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
